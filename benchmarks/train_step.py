r"""Throughput of the jitted train step, next to the matmul FLOP/s this machine reaches.

  python -m benchmarks.train_step [--configs=tiny,demo,paper] [--steps=10] [--paper_depth=2]
  python -m benchmarks.train_step --configs=demo_pixels,demo_pixels_scan --steps=30
  python -m benchmarks.train_step --configs=demo_pixels:16,demo_pixels:8,demo_pixels:4 --steps=20

For each config: steps/s, tokens/s (video tokens: batch x frames x tokens per frame) and the
achieved FLOP/s, with FLOPs per step from XLA's cost analysis of the compiled step. The matmul
reference (a float32 square matmul, or bfloat16 on accelerators) is measured in the same run,
so the ratio is comparable across noisy, shared machines. "paper" is the paper's shape (hidden
1152, 16 heads, 16 frames x 32 tokens x 4 channels) with --paper_depth layers instead of 28.
"demo" is the 16-frame demo model BENCHMARKS.md measured; "demo_pixels" the 32x32 demo of run CV
(configs/demo.py's get_32_pixel_config: 4 frames of 4x4-pixel patches, pixel convolutions, the
4 layers unrolled; BENCHMARKS.md measured it), "demo_16px" today's demo (16x16 frames),
"demo_pixels_scan" the same with its layers in a loop (model.scan_unroll=1).
A config name followed by ":N" runs it with global batch N.
"""

import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from ardiff import sharding
from ardiff import train
from ardiff import train_state
from ardiff.models import build_model
from configs import common
from configs import demo
from configs import tiny
from benchmarks import machine

_CONFIGS = flags.DEFINE_list("configs", ["tiny", "demo", "paper"], "Which configs to time.")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps per config (after one warm-up).")
_PAPER_DEPTH = flags.DEFINE_integer("paper_depth", 2, "Layers of the paper-shape model.")
_PAPER_BATCH = flags.DEFINE_integer("paper_batch", 2, "Global batch of the paper-shape model.")


def paper_config():
  """The paper's transformer and latent shape (16 frames x 32 tokens x 4 channels), fed random
  latents, with --paper_depth layers instead of 28."""
  c = common.get_paper_config("synthetic", learning_rate=2e-4, grad_clip=1.0)
  c.model.depth = _PAPER_DEPTH.value
  c.global_batch_size = _PAPER_BATCH.value
  c.model.dtype = "float32" if jax.default_backend() == "cpu" else "bfloat16"
  return c


def demo_pixels_scan_config():
  c = demo.get_32_pixel_config()
  c.model.scan_unroll = 1
  return c


def time_config(name, config):
  mesh = sharding.make_mesh(config.mesh)
  model, tx = build_model(config), train_state.make_optimizer(config)
  state = train_state.create_train_state(config, mesh, jax.random.key(0))
  m = config.model
  b, f = config.global_batch_size, config.num_frames
  rng = np.random.default_rng(0)
  if name == "paper":  # latent tokens straight in, as in the paper's stage 2
    batch = {"latents": jnp.asarray(
        rng.standard_normal((b, f, m.tokens_per_frame, m.in_channels)), jnp.float32)}
  else:
    r = config.data.resolution
    batch = {"video": jnp.asarray(rng.integers(0, 256, (b, f, r, r, 3), dtype=np.uint8))}
  batch["label"] = jnp.zeros((b,), jnp.int32)
  step = train.jit_train_step(config, mesh, model, tx,
                              train.batch_shardings(config, mesh, latents="latents" in batch))
  with sharding.mesh_context(config, mesh):
    compiled = step.lower(state, batch, jax.random.key(1)).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = float(cost.get("flops", 0.0))
  state, metrics = compiled(state, batch, jax.random.key(1))
  jax.block_until_ready(metrics)
  t0 = time.perf_counter()
  for _ in range(_STEPS.value):
    state, metrics = compiled(state, batch, jax.random.key(1))
  jax.block_until_ready(metrics)
  dt = (time.perf_counter() - t0) / _STEPS.value
  params = sum(a.size for a in jax.tree.leaves(state["params"]))
  tokens = b * f * m.tokens_per_frame
  return dict(name=name, params=params, batch=b, tokens=tokens, step_s=dt, flops=flops)


def main(argv):
  del argv
  # "demo": the 16-frame demo model that BENCHMARKS.md measured (configs/demo.py's earlier
  # settings), so that its rows stay reproducible.
  builders = {"tiny": tiny.get_config, "demo": demo.get_16_frame_config, "paper": paper_config,
              "demo_pixels": demo.get_32_pixel_config, "demo_pixels_scan": demo_pixels_scan_config,
              "demo_16px": demo.get_config}
  device = jax.devices()[0]
  ref_dtype = jnp.float32 if jax.default_backend() == "cpu" else jnp.bfloat16
  peak = machine.matmul_flops_per_sec(dtype=ref_dtype)
  print(f"device: {device.device_kind} x{jax.device_count()} ({jax.default_backend()}),"
        f" matmul 2048^2 {jnp.dtype(ref_dtype).name}: {peak / 1e9:.1f} GFLOP/s")
  print("| config | params | batch | steps/s | tokens/s | GFLOP/step | achieved GFLOP/s | / matmul |")
  print("|---|---|---|---|---|---|---|---|")
  for name in _CONFIGS.value:
    name, _, batch = name.partition(":")
    config = builders[name]()
    config.mesh.shape = (-1, 1, 1)
    if batch:
      config.global_batch_size = int(batch)
    r = time_config(name, config)
    achieved = r["flops"] / r["step_s"]
    print(f"| {name} | {r['params']:,} | {r['batch']} | {1 / r['step_s']:.2f} |"
          f" {r['tokens'] / r['step_s']:,.0f} | {r['flops'] / 1e9:.2f} | {achieved / 1e9:.1f} |"
          f" {achieved / peak:.2f} |", flush=True)
  print(f"matmul reference measured again: {machine.matmul_flops_per_sec(dtype=ref_dtype) / 1e9:.1f} GFLOP/s")


if __name__ == "__main__":
  app.run(main)
