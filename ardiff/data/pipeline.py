"""grain pipelines over the TFDS array_record datasets: training batches and fixed eval clips.

Both kinds of dataset read the same way: a clip of config.num_frames frames,
config.data.frame_stride apart, from a start drawn per record (and per epoch) from the seed.
The generated datasets store fixed-length clips (a clip that does not fit is an error); the
video datasets store whole videos of any length, and the videos shorter than a clip are left
out (counted in the log). Their records hold the whole video: reading one decompresses all of
its frames, so the cost of a clip grows with the length of its video.

Videos stay uint8 on the host (4x less to copy than float32); the train step converts them on
device with `patches.to_model_input`. Resizing from the stored frames (64x64, or a video
dataset's stored 64, 128 or 256) to config.data.resolution uses area averaging when shrinking
and bilinear interpolation when enlarging (frames.py).
"""

import dataclasses
import os
import time

from absl import logging
import grain
import jax
import ml_collections
import numpy as np

from ardiff.data import datasets
from ardiff.data import frames
from ardiff.data import latents as latents_lib
from ardiff.data import patches
from ardiff.data import video_datasets

num_classes = datasets.num_classes  # Re-exported: metadata needs no data on disk.


@dataclasses.dataclass(frozen=True)
class RandomClip(grain.transforms.RandomMap):
  """Cuts `num_frames` frames `stride` apart from a random start of record[key] and resizes
  them (frames; resolution None: latents, which become stage 2's tokens here, so that training
  batches, FVD's real clips and sampling prefixes all see the same: L2-normalised per token
  when l2_normalize, then times scale, as config.latents says).

  A frozen dataclass rather than a closure: grain's spawned workers must pickle it.
  """

  num_frames: int
  stride: int
  resolution: int | None
  key: str = "video"
  grayscale: bool = False  # frames: each pixel's brightest channel in all three (data.grayscale)
  l2_normalize: bool = False  # latents: config.latents.l2_normalize
  scale: float = 1.0  # latents: config.latents.scale

  def prepare(self, video: np.ndarray) -> np.ndarray:
    """Stored frames as training sees them: resized, and grey if grayscale (both idempotent)."""
    video = frames.resize_frames(video, self.resolution)
    return frames.grayscale(video) if self.grayscale else video

  def random_map(self, record, rng: np.random.Generator):
    video = record[self.key]  # [T, S, S, 3] uint8 or [T, N, C] float32 latents, T >= span
    span = (self.num_frames - 1) * self.stride + 1
    start = rng.integers(0, video.shape[0] - span + 1)
    clip = video[start:start + span:self.stride]  # [F, ...]
    if self.resolution is not None:
      clip = self.prepare(clip)
    else:
      clip = latents_lib.stage2_tokens(clip, self.l2_normalize, self.scale)
    return {self.key: clip, "label": np.int32(record["label"])}


class InMemoryFrames:
  """A frame source read once: every record decoded, resized to `resolution` and (grayscale)
  made grey, held in memory (config.data.in_memory). RandomClip's resize and grey then do
  nothing (both are idempotent), so a clip is the same as from the stored records, but the
  step no longer shares the cores with decoding: a training batch of the demo costs 3.4 ms of
  PNG decoding and resizing on a 2-core CPU (its step 32-37 ms), 0.6-0.7 ms from here. For
  small datasets (the generated digits: 2000 clips of 32 16x16 frames are 49 MB); a source that
  would take more than half the memory free now is an error.
  """

  def __init__(self, source, random_clip: RandomClip, name: str):
    resolution = random_clip.resolution
    frames_per_record = (source.num_frames if hasattr(source, "num_frames") else
                         np.full(len(source), source.dataset_info.features["video"].shape[0]))
    need = int(np.sum(frames_per_record)) * resolution * resolution * 3
    free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    if need > free / 2:
      raise ValueError(
          f"data.in_memory would hold {need / 2**30:.1f} GiB of {name} frames at {resolution}x"
          f"{resolution}, more than half of the {free / 2**30:.1f} GiB free: set"
          " data.in_memory=False to read the records as training goes.")
    start = time.time()
    self.records = []
    for i in range(len(source)):
      record = dict(source[i])
      record["video"] = random_clip.prepare(record["video"])
      self.records.append(record)
    logging.info("data.in_memory: %d %s records, %.0f MB of frames, read in %.1f s.",
                 len(self.records), name, need / 1e6, time.time() - start)

  def __len__(self) -> int:
    return len(self.records)

  def __getitem__(self, index: int):
    return self.records[index]


def create_train_iterator(config: ml_collections.ConfigDict, *, process_index: int | None = None,
                          process_count: int | None = None) -> grain.DatasetIterator:
  """An endless, checkpointable iterator of this process's share of each global batch.

  Yields {"video": uint8 [B_local, F, H, W, 3] (stage 2 on latents: "latents" float32
  [B_local, F, N, C]), "label": int32 [B_local]}, with
  B_local = global_batch_size // process_count. All processes index the same global stream
  (shuffled anew each epoch, random clip starts tied to the stream position); process p takes
  rows [p * B_local, (p + 1) * B_local) of every global batch and reads only those records.
  Hence the global batch does not depend on process_count or worker_count, and
  get_state()/set_state() resume it exactly.

  Args:
    config: uses seed, num_frames, global_batch_size and data.{name, data_dir, resolution,
      frame_stride, grayscale, worker_count, prefetch_buffer_size, split_number, in_memory}.
    process_index: defaults to jax.process_index().
    process_count: defaults to jax.process_count().
  """
  if process_index is None or process_count is None:
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  if config.global_batch_size % process_count:
    raise ValueError(f"global_batch_size={config.global_batch_size} is not divisible by the "
                     f"process count {process_count}.")
  local_batch = config.global_batch_size // process_count
  latents = _trains_on_latents(config)
  source, random_clip = _clips_of(config, "train", latents=latents)
  if config.data.get("in_memory") and not latents:
    source = InMemoryFrames(source, random_clip, config.data.name)
  shuffle_seed, clip_seed = _seeds(config.seed)
  ds = (grain.MapDataset.source(source)
        .shuffle(seed=shuffle_seed)  # a new permutation each epoch (the seed is folded in)
        .repeat()
        .random_map(random_clip, seed=clip_seed)
        # Batching a MapDataset keeps each batch whole inside one worker (STACK_NOTES: batching
        # inside DataLoader workers dropped records).
        .batch(local_batch, drop_remainder=True))
  ds = ds[process_index::process_count]
  read = grain.ReadOptions(num_threads=max(1, config.data.prefetch_buffer_size),
                           prefetch_buffer_size=config.data.prefetch_buffer_size)
  ds = ds.to_iter_dataset(read)
  if config.data.worker_count > 0:
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=config.data.worker_count))
  return iter(ds)


def load_clips(config: ml_collections.ConfigDict, split: str, num_clips: int, *,
               seed: int = 0, latents: bool = False) -> tuple[np.ndarray, np.ndarray]:
  """Deterministic clips of a split, for FVD's real videos and for prefix frames.

  Records are taken in a fixed order drawn from `seed` (each once, then again in a new order
  with new clip starts if num_clips exceeds the split), cut and resized as for training; the
  same seed gives the same clips. Videos shorter than a clip are left out. latents: the clips
  of the latent dataset of a stage-2 config instead of frames.

  Returns:
    videos: uint8 [num_clips, F, H, W, 3], F = config.num_frames, H = W = data.resolution
      (latents: float32 [num_clips, F, N, C]).
    labels: int32 [num_clips].
  """
  source, random_clip = _clips_of(config, split, latents=latents)
  shuffle_seed, clip_seed = _seeds(seed)
  ds = (grain.MapDataset.source(source)
        .shuffle(seed=shuffle_seed)
        .repeat()
        .random_map(random_clip, seed=clip_seed)
        [:num_clips])
  clips = list(ds.to_iter_dataset(grain.ReadOptions(num_threads=4, prefetch_buffer_size=8)))
  if not clips:
    shape = (0, config.num_frames, config.data.resolution, config.data.resolution, 3)
    return np.zeros(shape, np.uint8), np.zeros((0,), np.int32)
  return (np.stack([c[random_clip.key] for c in clips]),
          np.array([c["label"] for c in clips], np.int32))


def prefix_clips(config: ml_collections.ConfigDict, num_videos: int):
  """The real clips whose first config.sampling.prefix_frames frames are given (video
  prediction): uint8 [N, config.num_frames, H, W, 3] from sampling.prefix_split, and their labels.
  (None, None) without prefix frames. The frames after the prefix are the true continuation."""
  k = config.sampling.prefix_frames
  if not k:
    return None, None
  if k >= (config.sampling.num_frames or config.model.num_frames):
    raise ValueError(f"sampling.prefix_frames={k} leaves no frame to generate.")
  if k > config.num_frames:
    raise ValueError(
        f"sampling.prefix_frames={k} is longer than the training clips ({config.num_frames}"
        " frames) that the prefixes are cut from."
    )
  return load_clips(config, config.sampling.prefix_split, num_videos, seed=config.sampling.seed)


def prefix_tokens(config: ml_collections.ConfigDict, num_videos: int):
  """The given frames of prefix_clips as model tokens [N, prefix_frames, L, C], and labels:
  pixel patches, or for a stage-2 config the latents of the same clips (the latent dataset
  holds the same videos in the same order, and the clips are cut with the same seed)."""
  k = config.sampling.prefix_frames
  clips, labels = prefix_clips(config, num_videos)
  if clips is None:
    return None, None
  if _trains_on_latents(config):
    tokens, _ = load_clips(config, config.sampling.prefix_split, num_videos,
                           seed=config.sampling.seed, latents=True)
    return tokens[:, :k], labels
  return np.asarray(patches.video_to_tokens(config, clips[:, :k])), labels


def _trains_on_latents(config) -> bool:
  return bool(config.latents.autoencoder_workdir)


def _clips_of(config: ml_collections.ConfigDict, split: str, latents: bool = False):
  """The records of a split that hold a clip, and the RandomClip that cuts it; latents: of the
  stage-2 config's latent dataset (ardiff/data/latents.py)."""
  name = config.data.name
  if latents:
    latents_lib.check_ready(config, split)
    source = latents_lib.LatentSource(latents_lib.split_dir(config, split))
  else:
    source = datasets.open_split(name, split, config.data.data_dir,
                                 resolution=config.data.resolution,
                                 split_number=config.data.get("split_number"))
  num_frames, stride = config.num_frames, config.data.frame_stride
  span = (num_frames - 1) * stride + 1
  if stride < 1:
    raise ValueError(f"data.frame_stride={stride} must be at least 1.")
  if isinstance(source, (video_datasets.VideoSource, latents_lib.LatentSource)):
    long_enough = source.num_frames >= span
    if not long_enough.any():
      raise ValueError(
          f"num_frames={num_frames} with frame_stride={stride} spans {span} frames, but the "
          f"longest of the {len(source)} {name} {split} videos has {source.num_frames.max()}.")
    if not long_enough.all():
      logging.info("Leaving out %d of the %d %s %s videos: shorter than the %d frames of a clip "
                   "(num_frames=%d, frame_stride=%d).", (~long_enough).sum(), len(source), name,
                   split, span, num_frames, stride)
    source = source.subset(long_enough)
  else:
    stored = source.dataset_info.features["video"].shape[0]
    if span > stored:
      raise ValueError(
          f"num_frames={num_frames} with frame_stride={stride} spans {span} frames, but "
          f"{name} stores clips of {stored} frames.")
  if latents:
    return source, RandomClip(num_frames=num_frames, stride=stride, resolution=None, key="latents",
                              l2_normalize=bool(config.latents.l2_normalize),
                              scale=float(config.latents.get("scale", 1.0)))
  return source, RandomClip(num_frames=num_frames, stride=stride, resolution=config.data.resolution,
                            grayscale=bool(config.data.get("grayscale", False)))


def _seeds(seed: int) -> tuple[int, int]:
  """Two independent 32-bit seeds (grain requires [0, 2**32)) from any integer seed."""
  shuffle_seed, clip_seed = np.random.SeedSequence(seed).generate_state(2)
  return int(shuffle_seed), int(clip_seed)
