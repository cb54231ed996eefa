"""grain pipelines over the TFDS array_record datasets: training batches and fixed eval clips.

Videos stay uint8 on the host (4x less to copy than float32); the train step converts them on
device with `patches.to_model_input`. Resizing from the stored 64x64 to config.data.resolution
uses area averaging when shrinking and bilinear interpolation when enlarging (frames.py).
"""

import dataclasses

import grain
import jax
import ml_collections
import numpy as np

from ardiff.data import datasets
from ardiff.data import frames
from ardiff.data import patches

num_classes = datasets.num_classes  # Re-exported: metadata needs no data on disk.


@dataclasses.dataclass(frozen=True)
class RandomClip(grain.transforms.RandomMap):
  """Cuts `num_frames` frames `stride` apart from a random start and resizes them.

  A frozen dataclass rather than a closure: grain's spawned workers must pickle it.
  """

  num_frames: int
  stride: int
  resolution: int

  def random_map(self, record, rng: np.random.Generator):
    video = record["video"]  # [32, 64, 64, 3] uint8
    span = (self.num_frames - 1) * self.stride + 1
    start = rng.integers(0, video.shape[0] - span + 1)
    clip = video[start:start + span:self.stride]  # [F, 64, 64, 3]
    return {
        "video": frames.resize_frames(clip, self.resolution),
        "label": np.int32(record["label"]),
    }


def create_train_iterator(config: ml_collections.ConfigDict, *, process_index: int | None = None,
                          process_count: int | None = None) -> grain.DatasetIterator:
  """An endless, checkpointable iterator of this process's share of each global batch.

  Yields {"video": uint8 [B_local, F, H, W, 3], "label": int32 [B_local]}, with
  B_local = global_batch_size // process_count. All processes index the same global stream
  (shuffled anew each epoch, random clip starts tied to the stream position); process p takes
  rows [p * B_local, (p + 1) * B_local) of every global batch and reads only those records.
  Hence the global batch does not depend on process_count or worker_count, and
  get_state()/set_state() resume it exactly.

  Args:
    config: uses seed, num_frames, global_batch_size and data.{name, data_dir, resolution,
      frame_stride, worker_count, prefetch_buffer_size}.
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
  source = datasets.open_split(config.data.name, "train", config.data.data_dir)
  shuffle_seed, clip_seed = _seeds(config.seed)
  ds = (grain.MapDataset.source(source)
        .shuffle(seed=shuffle_seed)  # a new permutation each epoch (the seed is folded in)
        .repeat()
        .random_map(_random_clip(config, source), seed=clip_seed)
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
               seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Deterministic clips of a split, for FVD's real videos and for prefix frames.

  Records are taken in a seeded random order (each once, then again in a new order with new
  clip starts if num_clips exceeds the split), cut and resized as for training.

  Returns:
    videos: uint8 [num_clips, F, H, W, 3], F = config.num_frames, H = W = data.resolution.
    labels: int32 [num_clips].
  """
  source = datasets.open_split(config.data.name, split, config.data.data_dir)
  shuffle_seed, clip_seed = _seeds(seed)
  ds = (grain.MapDataset.source(source)
        .shuffle(seed=shuffle_seed)
        .repeat()
        .random_map(_random_clip(config, source), seed=clip_seed)
        [:num_clips])
  clips = list(ds.to_iter_dataset(grain.ReadOptions(num_threads=4, prefetch_buffer_size=8)))
  if not clips:
    shape = (0, config.num_frames, config.data.resolution, config.data.resolution, 3)
    return np.zeros(shape, np.uint8), np.zeros((0,), np.int32)
  return (np.stack([c["video"] for c in clips]),
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
  """The given frames of prefix_clips as model tokens [N, prefix_frames, L, C], and labels."""
  clips, labels = prefix_clips(config, num_videos)
  if clips is None:
    return None, None
  tokens = patches.video_to_tokens(config, clips[:, :config.sampling.prefix_frames])
  return np.asarray(tokens), labels


def _random_clip(config: ml_collections.ConfigDict, source) -> RandomClip:
  stored = source.dataset_info.features["video"].shape[0]
  num_frames, stride = config.num_frames, config.data.frame_stride
  span = (num_frames - 1) * stride + 1
  if stride < 1 or span > stored:
    raise ValueError(
        f"num_frames={num_frames} with frame_stride={stride} spans {span} frames, but "
        f"{config.data.name} stores clips of {stored} frames.")
  return RandomClip(num_frames=num_frames, stride=stride, resolution=config.data.resolution)


def _seeds(seed: int) -> tuple[int, int]:
  """Two independent 32-bit seeds (grain requires [0, 2**32)) from any integer seed."""
  shuffle_seed, clip_seed = np.random.SeedSequence(seed).generate_state(2)
  return int(shuffle_seed), int(clip_seed)
