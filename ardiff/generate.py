"""`--mode=sample`: load the trained model, generate videos in batches, write them to disk.

Writes under workdir/samples/:
  video_000.mp4, video_000.gif, ...   each video
  grid.gif, grid.png                  all videos side by side (animated; evenly spaced frames)
  samples.npy                         uint8 [N, F, H, W, 3]

--mode=sample streams (generate_stream, SampleWriter): frames are decoded and written as they
leave the sampler's window (Sampler.stream), the mp4 files and samples.npy (a memory-mapped
file) grow as they come, so that a video of thousands of frames needs memory for the window,
the KV cache and the frames of a segment, not for the whole video. The GIFs hold every frame
in memory: they are written for videos of up to config.sampling.gif_max_frames frames.
"""

import functools
import os

from absl import logging
import imageio.v2 as imageio_v2
import imageio.v3 as iio
import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from ardiff import autoencoder_state
from ardiff import checkpoint
from ardiff import sampling
from ardiff import video_io
from ardiff.data import patches
from ardiff.data import pipeline
from ardiff.models import autoencoder as autoencoder_lib
from ardiff.models import build_model


def decoder_workdir(config) -> str | None:
  """The stage-1 run whose decoder turns this config's latents into frames (None: pixels)."""
  return config.latents.decoder_workdir or config.latents.autoencoder_workdir


@functools.lru_cache(maxsize=4)
def _latent_decoder(workdir: str):
  """tokens [N, F, L, C] -> uint8 frames [N, F, H, W, 3] through the autoencoder of workdir
  (its temporal decoder if it is a temporal fine-tune), jitted; its weights loaded once."""
  params, run_config, _ = autoencoder_state.load_params(workdir)
  model = autoencoder_lib.build_autoencoder(run_config.autoencoder)
  rep = autoencoder_state.replicated_like(params)

  @functools.partial(jax.jit, in_shardings=(autoencoder_state.param_shardings(params), rep),
                     out_shardings=rep)
  def decode(params, tokens):
    frames = model.apply({"params": params}, tokens, method="decode")
    return autoencoder_lib.to_uint8(frames)

  return lambda tokens: np.asarray(decode(params, np.asarray(tokens, np.float32)))


def tokens_to_video(config, tokens) -> np.ndarray:
  """Model tokens [N, F, L, C] -> uint8 frames [N, F, H, W, 3]: pixel patches put back, or
  latents decoded by the stage-1 autoencoder (config.latents)."""
  workdir = decoder_workdir(config)
  if workdir is None:
    return np.asarray(patches.tokens_to_video(config, tokens))
  scale = float(config.latents.get("scale", 1.0))  # stage 2's tokens: latents times scale
  return _latent_decoder(os.path.abspath(workdir))(np.asarray(tokens, np.float32) / scale)


def decoder_context_frames(autoencoder_config) -> int | None:
  """Frames before a frame that its decoding depends on: 0 for the per-frame decoder, depth *
  (window - 1) for a temporal decoder with a window (each temporal layer reaches window - 1
  frames back), None (all of them) for one without."""
  ae = autoencoder_config
  if not ae.get("temporal", False):
    return 0
  if not ae.temporal_window:
    return None
  return ae.decoder_depth * (ae.temporal_window - 1)


class StreamDecoder:
  """Tokens -> uint8 frames, chunk after chunk of the same videos: each chunk is decoded after
  the last `context` token frames before it (None: all of them), so that a temporal decoder
  gives what it gives on the whole video; frames [N, n, H, W, 3] per chunk [N, n, L, C]."""

  def __init__(self, decode, context: int | None):
    self.decode, self.context, self.before = decode, context, None

  def __call__(self, tokens: np.ndarray) -> np.ndarray:
    if self.context == 0:  # the per-frame decoder (pixel patches too)
      return self.decode(tokens)
    n = tokens.shape[1]
    if self.before is not None:
      tokens = np.concatenate([self.before, tokens], axis=1)
    keep = tokens.shape[1] if self.context is None else min(self.context, tokens.shape[1])
    self.before = tokens[:, tokens.shape[1] - keep:]
    return self.decode(tokens)[:, -n:]


def decoder_context(config) -> int | None:
  """decoder_context_frames of config's tokens: 0 for pixel patches, else that of the stage-1
  run that decodes its latents (read from its config.json)."""
  workdir = decoder_workdir(config)
  if workdir is None:
    return 0
  return decoder_context_frames(checkpoint.run_config(workdir).autoencoder)


def sample_labels(config, num_videos: int) -> np.ndarray | None:
  if not config.model.num_classes:
    return None
  if config.sampling.label >= 0:
    return np.full((num_videos,), config.sampling.label, np.int32)
  rng = np.random.default_rng(config.sampling.seed)
  return rng.integers(0, config.model.num_classes, num_videos).astype(np.int32)


def _batches(config, num_videos: int):
  """The sampler and, per batch of config.sampling.batch_size videos: the indices of its videos,
  and their keys, labels and prefixes padded to the batch size (one compiled batch size)."""
  model = build_model(config)
  labels = sample_labels(config, num_videos)
  prefix, prefix_labels = pipeline.prefix_tokens(config, num_videos)
  if prefix is not None and labels is not None and config.sampling.label < 0:
    labels = prefix_labels  # continue a clip under its own class
  sampler = sampling.make_sampler(model, config, prefix_frames=config.sampling.prefix_frames)
  keys = jax.random.split(jax.random.key(config.sampling.seed), num_videos)
  batch = config.sampling.batch_size

  def batches():
    for start in range(0, num_videos, batch):
      idx = np.arange(start, min(start + batch, num_videos))
      take = np.concatenate([idx, np.full(batch - len(idx), idx[-1])])
      yield (idx, keys[take], None if labels is None else jnp.asarray(labels[take]),
             None if prefix is None else jnp.asarray(prefix[take]))

  return sampler, batches()


def generate(config, params, num_videos: int, *, progress: bool = True) -> np.ndarray:
  """uint8 [num_videos, F, H, W, 3], generated in batches of config.sampling.batch_size, each
  batch's videos by one compiled program."""
  sampler, batches = _batches(config, num_videos)
  videos = []
  for idx, keys, labels, prefix in tqdm.tqdm(
      batches, total=-(-num_videos // config.sampling.batch_size), desc="sampling",
      disable=not progress):
    out = sampling.to_host(sampler({"params": params}, keys, labels, prefix))
    videos.append(tokens_to_video(config, out)[: len(idx)])
  return np.concatenate(videos)


def generate_stream(config, params, num_videos: int, *, segment_frames: int | None = None):
  """The videos of generate(), yielded as the sampler finishes their frames: (videos, first
  frame, uint8 frames [len(videos), n, H, W, 3]), batch after batch, each batch's frames in
  order (Sampler.stream; segment_frames: how far its window moves per segment)."""
  sampler, batches = _batches(config, num_videos)
  context = decoder_context(config)
  for idx, keys, labels, prefix in batches:
    # A new decoder per batch: the context it keeps is of this batch's videos.
    decode = StreamDecoder(functools.partial(tokens_to_video, config), context)
    for first, tokens in sampler.stream({"params": params}, keys, labels, prefix, segment_frames):
      yield idx, first, decode(tokens)[: len(idx)]


class SampleWriter:
  """The files of write_samples, written frames by frames as generate_stream yields them
  (add), finished by close(): mp4 files through ffmpeg, samples.npy as a memory-mapped file,
  grid.png from the evenly spaced frames as they pass, and the GIFs (which need every frame)
  only for videos of at most gif_max_frames frames."""

  def __init__(self, directory: str, num_videos: int, num_frames: int, frame_shape,
               fps: float = 8.0, gif_max_frames: int = 256):
    os.makedirs(directory, exist_ok=True)
    self.directory, self.fps, self.num_frames = directory, fps, num_frames
    self.paths = {"grid_png": os.path.join(directory, "grid.png"),
                  "npy": os.path.join(directory, "samples.npy")}
    self.npy = np.lib.format.open_memmap(self.paths["npy"], mode="w+", dtype=np.uint8,
                                         shape=(num_videos, num_frames) + tuple(frame_shape))
    self.columns = np.linspace(0, num_frames - 1, min(num_frames, 8)).astype(int)
    self.stills = np.zeros((num_videos, len(self.columns)) + tuple(frame_shape), np.uint8)
    self.gifs = num_frames <= gif_max_frames
    if self.gifs:
      self.paths["grid_gif"] = os.path.join(directory, "grid.gif")
    self.mp4 = {}  # video index -> its open ffmpeg writer

  def add(self, videos: np.ndarray, first: int, frames: np.ndarray):
    """frames uint8 [len(videos), n, H, W, 3]: frames first .. first + n - 1 of `videos`."""
    n = frames.shape[1]
    self.npy[videos, first:first + n] = frames
    picked = (self.columns >= first) & (self.columns < first + n)
    self.stills[np.ix_(videos, np.nonzero(picked)[0])] = frames[:, self.columns[picked] - first]
    for i, video in zip(videos, frames):
      if i not in self.mp4:
        self.mp4[i] = _mp4_writer(os.path.join(self.directory, f"video_{i:03d}.mp4"), self.fps)
      for frame in video_io.upscale(video, 4):
        self.mp4[i].append_data(frame)
      if first + n == self.num_frames:  # the video is complete
        self.mp4.pop(i).close()

  def close(self) -> dict:
    for writer in self.mp4.values():
      writer.close()
    self.npy.flush()
    f = self.num_frames
    still = np.concatenate([np.concatenate(list(v), axis=1) for v in self.stills], axis=0)
    iio.imwrite(self.paths["grid_png"], video_io.upscale(still, 2))
    if self.gifs:  # from the memory-mapped file, read back once the videos are complete
      videos = np.load(self.paths["npy"], mmap_mode="r")
      for i, v in enumerate(videos):
        video_io.write_gif(os.path.join(self.directory, f"video_{i:03d}.gif"),
                           video_io.upscale(np.asarray(v), 4), self.fps)
      video_io.write_gif(self.paths["grid_gif"], video_io.upscale(video_io.grid(videos), 2),
                         self.fps)
    elif f:
      logging.info("%d frames: no GIFs (config.sampling.gif_max_frames); the mp4 files and"
                   " samples.npy hold the videos.", f)
    return self.paths


def _mp4_writer(path: str, fps: float):
  """An ffmpeg H.264 writer (yuv420p, as video_io.write_mp4) that takes frames one by one."""
  return imageio_v2.get_writer(path, format="FFMPEG", fps=fps, codec="libx264",
                               macro_block_size=1, pixelformat="yuv420p")


def write_samples(directory: str, videos: np.ndarray, fps: float = 8.0,
                  gif_max_frames: int = 256) -> dict:
  """Videos uint8 [N, F, H, W, 3] held whole, written as SampleWriter writes a stream."""
  writer = SampleWriter(directory, len(videos), videos.shape[1], videos.shape[2:], fps,
                        gif_max_frames)
  writer.add(np.arange(len(videos)), 0, videos)
  return writer.close()


def sample_and_save(config, workdir: str) -> dict:
  """The --mode=sample entry: generates config.sampling's videos and writes them as they come
  (generate_stream, SampleWriter; process 0 writes). Returns the paths written."""
  params, step = checkpoint.load_inference_params(config, workdir)
  s = config.sampling
  num_frames = s.num_frames or config.model.num_frames
  print(
      f"Sampling {s.num_videos} videos of {num_frames} frames (window {config.model.num_frames},"
      f" ar_step {s.ar_step}, {s.num_steps} DDIM steps) from "
      + (f"checkpoint {step}" if step is not None else "the export"),
      flush=True,
  )
  directory = os.path.join(workdir, "samples")
  writer = None
  with tqdm.tqdm(total=s.num_videos * num_frames, desc="frames", unit="frame") as bar:
    for videos, first, frames in generate_stream(config, params, s.num_videos,
                                                 segment_frames=s.stream_segment_frames):
      if writer is None and jax.process_index() == 0:
        writer = SampleWriter(directory, s.num_videos, num_frames, frames.shape[2:],
                              gif_max_frames=s.gif_max_frames)
      if writer is not None:
        writer.add(videos, first, frames)
      bar.update(frames.shape[0] * frames.shape[1])
  if writer is None:
    return {}
  paths = writer.close()
  logging.info("Wrote %s", paths)
  print(f"Wrote {s.num_videos} videos to {directory} (grid: {paths['grid_png']}).", flush=True)
  return paths
