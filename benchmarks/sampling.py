r"""Seconds per video and model evaluations of AD sampling, with and without the KV cache.

  python -m benchmarks.sampling [--models=demo,paper] [--paper_depth=2] [--videos=4]
  python -m benchmarks.sampling --models=demo --cases=16:5,128:5,512:5 --kv=exact,rolling
  python -m benchmarks.sampling --models=demo --cases=512:3,2048:3 --kv=rolling --memory

Cases: 16 frames at ar_step 0, 5 and 50, and 128 frames at ar_step 5 (50 DDIM steps), each with
the KV cache off and in the --kv modes (exact: recomputes the view when the window slides;
rolling: keeps it), for the demo model and the paper's shape (hidden 1152, 16 heads, 16 x 32
tokens x 4 channels) with --paper_depth layers. Random weights: the cost does not depend on
them. "frames/call" is the mean number of frames one model call runs (the window without the
cache). Compile time is reported apart from the run time.

--memory: instead of timing, the memory of the compiled programs (XLA's memory analysis:
arguments, outputs and temporaries; and the program's size, schedule constants included) of the
whole video in one program (Sampler.__call__) against one segment of Sampler.stream, which
--mode=sample runs.
"""

import time

from absl import app
from absl import flags
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ardiff import sampling
from ardiff import sampling_plan
from ardiff.models import build_model
from configs import common
from configs import demo

_MODELS = flags.DEFINE_list("models", ["demo", "paper"], "Which models to time.")
_PAPER_DEPTH = flags.DEFINE_integer("paper_depth", 2, "Layers of the paper-shape model.")
_VIDEOS = flags.DEFINE_integer("videos", 4, "Videos per batch.")
_CASES = flags.DEFINE_string("cases", "16:0,16:5,16:50,128:5", "frames:ar_step pairs.")
_KV = flags.DEFINE_list("kv", ["exact", "off"], "KV cache: off, or a sampling.kv_cache_mode.")
_MEMORY = flags.DEFINE_bool("memory", False, "Memory of the compiled programs, whole vs stream.")


def paper_config():
  c = common.get_paper_config("synthetic", learning_rate=2e-4, grad_clip=1.0)
  c.model.depth = _PAPER_DEPTH.value
  c.model.dtype = "float32" if jax.default_backend() == "cpu" else "bfloat16"
  return c


def random_params(model, config):
  """Weights ~ N(0, 1/fan_in) rather than the zero-initialised output of a fresh DiT."""
  m = config.model
  x = jnp.zeros((1, m.num_frames, m.tokens_per_frame, m.in_channels))
  abstract = jax.eval_shape(model.init, jax.random.key(0), x, jnp.zeros((1, m.num_frames), jnp.int32))
  leaves, tree = jax.tree.flatten(nn.unbox(abstract)["params"])
  keys = jax.random.split(jax.random.key(1), len(leaves))
  new = [jax.random.normal(k, a.shape, a.dtype) / np.sqrt(a.shape[0] if a.ndim > 1 else 50.0)
         for k, a in zip(keys, leaves)]
  return {"params": tree.unflatten(new)}


def program_mib(compiled) -> tuple[float, float]:
  """(arguments + outputs + temporaries, generated code) of a compiled program, MiB."""
  m = compiled.memory_analysis()
  buffers = m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
  return buffers / 2**20, m.generated_code_size_in_bytes / 2**20


def memory_columns(sampler, params, keys) -> str:
  """The --memory columns: the whole-video program against the first stream segment."""
  whole = program_mib(jax.jit(sampler.fn).lower(params, keys, None, None).compile())
  plan = sampling_plan.stream_segments(sampler.schedule, sampler.window, sampler.window)
  carry = sampler.init(params, keys, None, plan.buffer_frames, None)
  rows = sampling_plan.segment_rows(sampler.schedule, sampler.plan, plan.begins[0],
                                    plan.ends[0], plan.offsets[0], plan.buffer_frames)
  segment = program_mib(sampler.segment.lower(params, keys, None, carry, rows, 0, 0).compile())
  return (f" {whole[0]:.1f} / {whole[1]:.1f} | {segment[0]:.1f} / {segment[1]:.1f} |"
          f" {plan.buffer_frames} |")


def samplers():
  """Every (model, case, KV-cache mode) of the flags: (row label, frames, sampler, params,
  keys), the sampler built for the case on random weights."""
  # "demo": the 16-frame demo model that BENCHMARKS.md measured (configs/demo.py's earlier
  # settings), so that its rows stay reproducible.
  builders = {"demo": demo.get_16_frame_config, "paper": paper_config}
  keys = jax.random.split(jax.random.key(0), _VIDEOS.value)
  for name in _MODELS.value:
    config = builders[name]()
    config.sampling.num_steps = 50
    model = build_model(config)
    params = random_params(model, config)
    for case in _CASES.value.split(","):
      frames, ar_step = (int(v) for v in case.split(":"))
      for mode in _KV.value:
        config.sampling.ar_step = ar_step
        config.sampling.kv_cache = mode != "off"
        config.sampling.kv_cache_mode = "exact" if mode == "off" else mode
        sampler = sampling.make_sampler(model, config, num_frames=frames)
        yield f"| {name} | {frames} | {ar_step} | {mode} |", frames, sampler, params, keys


def main(argv):
  del argv
  print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), {_VIDEOS.value} videos per batch")
  if _MEMORY.value:
    print("| model | frames | ar_step | kv_cache | whole video: buffers / program MiB |"
          " stream segment: buffers / program MiB | buffer frames |")
    print("|---|---|---|---|---|---|---|")
    for label, _, sampler, params, keys in samplers():
      print(label + memory_columns(sampler, params, keys), flush=True)
    return
  print("| model | frames | ar_step | kv_cache | model calls | frames/call | compile s | s/video |"
        " ms/frame |")
  print("|---|---|---|---|---|---|---|---|---|")
  for label, frames, sampler, params, keys in samplers():
    t0 = time.perf_counter()
    compiled = jax.jit(sampler.fn).lower(params, keys, None, None).compile()
    t1 = time.perf_counter()
    jax.block_until_ready(compiled(params, keys, None, None))
    dt = (time.perf_counter() - t1) / _VIDEOS.value
    print(f"{label} {sampler.num_model_calls} | {sampler.frames_per_call.mean():.1f} |"
          f" {t1 - t0:.1f} | {dt:.2f} | {1000 * dt / frames:.1f} |", flush=True)

if __name__ == "__main__":
  app.run(main)
