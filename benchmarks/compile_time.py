r"""Compile and run time of the paper-size train step and KV-cached sampler, by depth.

  python -m benchmarks.compile_time [--depths=4,28] [--what=train,sampler]

The model is the paper's transformer shape (hidden 1152, 16 heads, 16 frames x 32 latent tokens
x 4 channels) with --depths layers; float32 on CPU, bfloat16 on accelerators, random weights
and latents (the cost does not depend on them).
- train: the jitted train step (forward, backward, AdamW, EMA) at --batch; compile s is tracing,
  lowering and compiling; run s is one step, the mean of --train_steps after a warm-up.
- sampler: the KV-cached AD sampler for --frames frames at --ar_step, --num_steps DDIM steps, one
  batch of --videos; run s is the time of one compiled call divided by --videos.

Each measurement runs in a subprocess of its own: the 28-layer train state is about 13 GB in
float32 (parameters, Adam moments, EMA), which is released between measurements that way. A
measurement that takes longer than --timeout seconds is reported as "> timeout". Besides wall
seconds, the CPU seconds of the process (all threads) are given: on a shared, busy machine
they move less than the wall time.
"""

import json
import subprocess
import sys
import time

from absl import app
from absl import flags
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ardiff import sampling
from ardiff import sharding
from ardiff import train
from ardiff import train_state
from ardiff.models import build_model
from configs import common
from benchmarks import machine

_DEPTHS = flags.DEFINE_list("depths", ["4", "28"], "Layers of the paper-shape model.")
_WHAT = flags.DEFINE_list("what", ["train", "sampler"], "train and/or sampler.")
_BATCH = flags.DEFINE_integer("batch", 1, "Global batch of the train step.")
_TRAIN_STEPS = flags.DEFINE_integer("train_steps", 2, "Timed train steps (after one warm-up).")
_FRAMES = flags.DEFINE_integer("frames", 16, "Frames per sampled video.")
_AR_STEP = flags.DEFINE_integer("ar_step", 5, "AD sampling ar_step.")
_NUM_STEPS = flags.DEFINE_integer("num_steps", 50, "DDIM steps.")
_VIDEOS = flags.DEFINE_integer("videos", 1, "Videos per sampling batch.")
_TIMEOUT = flags.DEFINE_integer("timeout", 1800, "Seconds one measurement may take.")
_CHILD = flags.DEFINE_string("child", None, "Internal: run one measurement, what:depth.")


def paper_config(depth: int):
  c = common.get_paper_config("synthetic", learning_rate=2e-4, grad_clip=1.0)
  c.model.depth = depth
  c.model.dtype = "float32" if jax.default_backend() == "cpu" else "bfloat16"
  c.mesh.shape = (-1, 1, 1)
  return c


class Timer:
  """Wall and process CPU seconds of a `with` block, divided by n."""

  def __init__(self, n: int = 1):
    self.n = n

  def __enter__(self):
    self.t0, self.c0 = time.perf_counter(), time.process_time()
    return self

  def __exit__(self, *exc):
    self.wall = (time.perf_counter() - self.t0) / self.n
    self.cpu = (time.process_time() - self.c0) / self.n


def time_train(depth: int) -> tuple[Timer, Timer]:
  config = paper_config(depth)
  config.global_batch_size = _BATCH.value
  m, b = config.model, config.global_batch_size
  mesh = sharding.make_mesh(config.mesh)
  model, tx = build_model(config), train_state.make_optimizer(config)
  rng = np.random.default_rng(0)
  batch = {
      "latents": jnp.asarray(
          rng.standard_normal((b, config.num_frames, m.tokens_per_frame, m.in_channels)),
          jnp.float32,
      ),
      "label": jnp.zeros((b,), jnp.int32),
  }
  step = train.jit_train_step(config, mesh, model, tx,
                              train.batch_shardings(config, mesh, latents=True))
  # Compiled against the abstract state: the compile time does not wait for the 13 GB state.
  abstract = train_state.abstract_state(config, mesh, model, tx)
  with Timer() as compile_t, sharding.mesh_context(config, mesh):
    compiled = step.lower(abstract, batch, jax.random.key(1)).compile()
  state = train_state.create_train_state(config, mesh, jax.random.key(0))
  state, metrics = compiled(state, batch, jax.random.key(1))  # warm-up
  jax.block_until_ready(metrics)
  with Timer(_TRAIN_STEPS.value) as run_t:
    for _ in range(_TRAIN_STEPS.value):
      state, metrics = compiled(state, batch, jax.random.key(1))
    jax.block_until_ready(metrics)
  return compile_t, run_t


def time_sampler(depth: int) -> tuple[Timer, Timer]:
  config = paper_config(depth)
  config.sampling.num_steps = _NUM_STEPS.value
  config.sampling.ar_step = _AR_STEP.value
  config.sampling.kv_cache = True
  m = config.model
  model = build_model(config)
  x = jnp.zeros((1, m.num_frames, m.tokens_per_frame, m.in_channels))
  t = jnp.zeros((1, m.num_frames), jnp.int32)
  abstract = jax.eval_shape(model.init, jax.random.key(0), x, t)
  # N(0, 0.02) weights everywhere, not the zero output layer of a fresh DiT.
  leaves, tree = jax.tree.flatten(nn.unbox(abstract)["params"])
  keys = jax.random.split(jax.random.key(1), len(leaves))
  params = {"params": tree.unflatten(
      [0.02 * jax.random.normal(k, a.shape, a.dtype) for k, a in zip(keys, leaves)])}
  sampler = sampling.make_sampler(model, config, num_frames=_FRAMES.value)
  rngs = jax.random.split(jax.random.key(0), _VIDEOS.value)
  with Timer() as compile_t:
    compiled = jax.jit(sampler.fn).lower(params, rngs, None, None).compile()
  with Timer(_VIDEOS.value) as run_t:
    jax.block_until_ready(compiled(params, rngs, None, None))
  return compile_t, run_t


def run_child(what: str, depth: int) -> list[str]:
  """The table's compile s, run s, compile CPU s and run CPU s, from a fresh process."""
  flag_names = ("batch", "train_steps", "frames", "ar_step", "num_steps", "videos")
  args = [f"--{name}={flags.FLAGS[name].value}" for name in flag_names]
  # Run as this module (python -m) where it was started so: configs/ is then importable.
  me = ["-m", __spec__.name] if __spec__ else [__file__]
  try:
    proc = subprocess.run(
        [sys.executable, *me, f"--child={what}:{depth}", *args],
        capture_output=True, text=True, timeout=_TIMEOUT.value, check=False,
    )
  except subprocess.TimeoutExpired:
    return [f"> {_TIMEOUT.value}", "-", "-", "-"]
  lines = [l for l in proc.stdout.splitlines() if l.startswith("{")]
  if proc.returncode or not lines:
    print(proc.stderr[-3000:], file=sys.stderr)
    return ["failed", "-", "-", "-"]
  r = json.loads(lines[-1])
  return [f"{r['compile_s']:.1f}", f"{r['run_s']:.2f}", f"{r['compile_cpu_s']:.1f}",
          f"{r['run_cpu_s']:.2f}"]


def main(argv):
  del argv
  if _CHILD.value:
    what, depth = _CHILD.value.split(":")
    compile_t, run_t = {"train": time_train, "sampler": time_sampler}[what](int(depth))
    print(json.dumps({"compile_s": compile_t.wall, "run_s": run_t.wall,
                      "compile_cpu_s": compile_t.cpu, "run_cpu_s": run_t.cpu}), flush=True)
    return
  print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), float32 matmul"
        f" 2048^2: {machine.matmul_flops_per_sec() / 1e9:.1f} GFLOP/s")
  print(f"train step: batch {_BATCH.value}; sampler: {_FRAMES.value} frames, ar_step"
        f" {_AR_STEP.value}, {_NUM_STEPS.value} DDIM steps, KV cache, {_VIDEOS.value} video(s)")
  print("| model | depth | what | compile s | run s (one step / one video) | compile CPU s |"
        " run CPU s |")
  print("|---|---|---|---|---|---|---|")
  for depth in _DEPTHS.value:
    for what in _WHAT.value:
      cells = run_child(what, int(depth))
      label = "train step" if what == "train" else "sampler"
      print(f"| paper | {depth} | {label} | {' | '.join(cells)} |", flush=True)


if __name__ == "__main__":
  app.run(main)
