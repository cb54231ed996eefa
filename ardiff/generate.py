"""`--mode=sample`: load the trained model, generate videos in batches, write them to disk.

Writes under workdir/samples/:
  video_000.mp4, video_000.gif, ...   each video
  grid.gif, grid.png                  all videos side by side (animated; first/mid/last frames)
  samples.npy                         uint8 [N, F, H, W, 3]
"""

import functools
import os

from absl import logging
import imageio.v3 as iio
import jax
from jax.experimental import multihost_utils
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
  return _latent_decoder(os.path.abspath(workdir))(tokens)


def sample_labels(config, num_videos: int) -> np.ndarray | None:
  if not config.model.num_classes:
    return None
  if config.sampling.label >= 0:
    return np.full((num_videos,), config.sampling.label, np.int32)
  rng = np.random.default_rng(config.sampling.seed)
  return rng.integers(0, config.model.num_classes, num_videos).astype(np.int32)


def generate(config, params, num_videos: int, *, progress: bool = True) -> np.ndarray:
  """uint8 [num_videos, F, H, W, 3], generated in batches of config.sampling.batch_size."""
  model = build_model(config)
  labels = sample_labels(config, num_videos)
  prefix, prefix_labels = pipeline.prefix_tokens(config, num_videos)
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
  params, step = checkpoint.load_inference_params(config, workdir)
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
