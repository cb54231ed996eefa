"""`--mode=sample`: load the trained model, generate videos in batches, write them to disk.

Writes under workdir/samples/:
  video_000.mp4, video_000.gif, ...   each video
  grid.gif, grid.png                  all videos side by side (animated; first/mid/last frames)
  samples.npy                         uint8 [N, F, H, W, 3]
"""

import os

from absl import logging
import imageio.v3 as iio
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import numpy as np
import tqdm

from ardiff import checkpoint
from ardiff import sampling
from ardiff import sharding
from ardiff import train
from ardiff import video_io
from ardiff.data import patches
from ardiff.models import build_model


def load_inference_params(config, workdir: str, mesh=None):
  """EMA parameters (or the raw ones if config.sampling.use_ema is False) of the latest
  checkpoint in workdir, else of workdir/export. Returns (params, step or None)."""
  mesh = mesh or sharding.make_mesh(config.mesh)
  key = "ema_params" if config.sampling.use_ema else "params"
  ckpt = checkpoint.Checkpointer(workdir)
  try:
    if ckpt.latest_step() is not None:
      state = ckpt.restore(train.abstract_state(config, mesh))
      return state[key], int(state["step"])
  finally:
    ckpt.close()
  if os.path.exists(os.path.join(workdir, "export", "params")):
    if not config.sampling.use_ema:
      logging.warning("sampling.use_ema=False, but the export holds only the EMA parameters.")
    # Restored onto this run's mesh, whatever topology wrote the export.
    params, _ = checkpoint.load_export(workdir, train.abstract_state(config, mesh)["ema_params"])
    return params, None
  raise FileNotFoundError(
      f"No checkpoint in {os.path.join(workdir, 'checkpoints')} and no export in"
      f" {os.path.join(workdir, 'export')}: train first with --mode=train and the same --workdir."
  )


def tokens_to_video(config, tokens) -> np.ndarray:
  """Model tokens [N, F, L, C] -> uint8 frames [N, F, H, W, 3]."""
  if config.model.tokens_per_frame != (config.data.resolution // config.data.patch_size) ** 2:
    raise NotImplementedError(
        "This config generates latent tokens; decoding them needs the frame autoencoder,"
        " which is not available yet in this version."
    )
  r = config.data.resolution
  return np.asarray(patches.to_uint8(patches.unpatchify(tokens, config.data.patch_size, r, r)))


def sample_labels(config, num_videos: int) -> np.ndarray | None:
  if not config.model.num_classes:
    return None
  if config.sampling.label >= 0:
    return np.full((num_videos,), config.sampling.label, np.int32)
  rng = np.random.default_rng(config.sampling.seed)
  return rng.integers(0, config.model.num_classes, num_videos).astype(np.int32)


def prefix_clips(config, num_videos: int):
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
  from ardiff.data import pipeline  # pylint: disable=g-import-not-at-top  (needs the dataset)

  return pipeline.load_clips(config, config.sampling.prefix_split, num_videos,
                             seed=config.sampling.seed)


def prefix_tokens(config, num_videos: int):
  """The given frames of prefix_clips as model tokens [N, prefix_frames, L, C], and labels."""
  clips, labels = prefix_clips(config, num_videos)
  if clips is None:
    return None, None
  k = config.sampling.prefix_frames
  tokens = patches.patchify(patches.to_model_input(jnp.asarray(clips[:, :k])), config.data.patch_size)
  return np.asarray(tokens), labels


def generate(config, params, num_videos: int, *, progress: bool = True) -> np.ndarray:
  """uint8 [num_videos, F, H, W, 3], generated in batches of config.sampling.batch_size."""
  model = build_model(config)
  labels = sample_labels(config, num_videos)
  prefix, prefix_labels = prefix_tokens(config, num_videos)
  if prefix is not None and labels is not None and config.sampling.label < 0:
    labels = prefix_labels  # continue a clip under its own class
  sampler = sampling.make_sampler(model, config, prefix_frames=config.sampling.prefix_frames)
  keys = jax.random.split(jax.random.key(config.sampling.seed), num_videos)
  batch = config.sampling.batch_size
  videos = []
  for start in tqdm.trange(0, num_videos, batch, desc="sampling", disable=not progress):
    idx = np.arange(start, min(start + batch, num_videos))
    pad = batch - len(idx)  # the last batch is padded: one compiled batch size
    take = np.concatenate([idx, np.full(pad, idx[-1])])
    out = sampler(
        {"params": params},
        keys[take],
        None if labels is None else jnp.asarray(labels[take]),
        None if prefix is None else jnp.asarray(prefix[take]),
    )
    if not out.is_fully_addressable:  # sharded across hosts: every process gets all videos
      out = multihost_utils.process_allgather(out, tiled=True)
    videos.append(tokens_to_video(config, out)[: len(idx)])
  return np.concatenate(videos)


def write_samples(directory: str, videos: np.ndarray, fps: float = 8.0) -> dict:
  """Each video as mp4 and GIF, a grid GIF and PNG, and samples.npy. Returns the paths."""
  os.makedirs(directory, exist_ok=True)
  for i, v in enumerate(videos):
    video_io.write_mp4(os.path.join(directory, f"video_{i:03d}.mp4"), video_io.upscale(v, 4), fps)
    video_io.write_gif(os.path.join(directory, f"video_{i:03d}.gif"), video_io.upscale(v, 4), fps)
  grid = video_io.upscale(video_io.grid(videos), 2)
  paths = {
      "grid_gif": os.path.join(directory, "grid.gif"),
      "grid_png": os.path.join(directory, "grid.png"),
      "npy": os.path.join(directory, "samples.npy"),
  }
  video_io.write_gif(paths["grid_gif"], grid, fps)
  # A still for the README: rows of videos, columns of evenly spaced frames.
  f = videos.shape[1]
  cols = np.linspace(0, f - 1, min(f, 8)).astype(int)
  still = np.concatenate([np.concatenate(list(v[cols]), axis=1) for v in videos], axis=0)
  iio.imwrite(paths["grid_png"], video_io.upscale(still, 2))
  np.save(paths["npy"], videos)
  return paths


def sample_and_save(config, workdir: str) -> dict:
  """The --mode=sample entry: returns the paths written."""
  params, step = load_inference_params(config, workdir)
  num_frames = config.sampling.num_frames or config.model.num_frames
  print(
      f"Sampling {config.sampling.num_videos} videos of {num_frames} frames (window"
      f" {config.model.num_frames}, ar_step {config.sampling.ar_step}, {config.sampling.num_steps}"
      f" DDIM steps) from " + (f"checkpoint {step}" if step is not None else "the export"),
      flush=True,
  )
  videos = generate(config, params, config.sampling.num_videos)
  paths = {}
  if jax.process_index() == 0:
    paths = write_samples(os.path.join(workdir, "samples"), videos)
    logging.info("Wrote %s", paths)
    print(f"Wrote {len(videos)} videos to {os.path.join(workdir, 'samples')} (grid: {paths['grid_gif']}).", flush=True)
  return paths
