r"""Peak memory per device of the paper-size train step, by rematerialisation policy.

  python -m benchmarks.memory [--devices=8] [--batch=96] [--mesh=-1,1,1] [--dtype=bfloat16]

The paper's DiT (28 layers, hidden 1152, 16 heads, 16 frames x 32 latent tokens x 4 channels)
and its train step (forward, backward, AdamW, EMA) at global batch --batch over a mesh of
--devices devices, compiled for each `model.remat_policy` (and without remat), never run. The
numbers are XLA's memory analysis of the compiled per-device program: arguments (parameters,
optimizer state, EMA, the batch shard), temporaries (activations kept for the backward pass and
workspace) and their sum less the donated buffers that the outputs reuse. On a CPU the device
count is faked (--xla_force_host_platform_device_count) and the analysis is the CPU compiler's
buffer assignment: the ranking of the policies carries over to accelerators, the bytes are
close but not the same as a GPU's or TPU's (run it there for theirs).
"""

import os
import sys

if "jax" not in sys.modules:  # fake the devices on a CPU host before jax starts
  _n = next((a.split("=")[1] for a in sys.argv if a.startswith("--devices=")), "8")
  os.environ["XLA_FLAGS"] = (
      os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={_n}"
  )

import time  # noqa: E402

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from ardiff import sharding  # noqa: E402
from ardiff import train  # noqa: E402
from ardiff import train_state  # noqa: E402
from ardiff.models import build_model  # noqa: E402
from ardiff.models.dit import REMAT_POLICIES  # noqa: E402
from configs import common  # noqa: E402

_DEVICES = flags.DEFINE_integer("devices", 8, "Devices of the mesh (faked on a CPU).")
_BATCH = flags.DEFINE_integer("batch", 96, "Global batch.")
_MESH = flags.DEFINE_list("mesh", ["-1", "1", "1"], "config.mesh.shape (data, fsdp, tensor).")
_DTYPE = flags.DEFINE_string("dtype", "bfloat16", "model.dtype (compute).")
_DEPTH = flags.DEFINE_integer("depth", 28, "Layers.")
_POLICIES = flags.DEFINE_list(
    "policies", ["none", *REMAT_POLICIES], "Remat policies ('none': no remat)."
)


def compiled_step(policy: str):
  c = common.get_paper_config("synthetic", learning_rate=2e-4, grad_clip=1.0)
  c.model.depth, c.model.dtype, c.global_batch_size = _DEPTH.value, _DTYPE.value, _BATCH.value
  c.mesh.shape = tuple(int(s) for s in _MESH.value)
  c.model.remat = policy != "none"
  if c.model.remat:
    c.model.remat_policy = policy
  devices = jax.devices()[: _DEVICES.value]
  mesh = sharding.make_mesh(c.mesh, devices)
  sharding.check_global_batch(c, mesh)
  model, tx = build_model(c), train_state.make_optimizer(c)
  m = c.model
  batch_shards = train.batch_shardings(c, mesh, latents=True)
  batch = {
      "latents": jax.ShapeDtypeStruct(
          (c.global_batch_size, c.num_frames, m.tokens_per_frame, m.in_channels), jnp.float32,
          sharding=batch_shards["latents"],
      ),
      "label": jax.ShapeDtypeStruct(
          (c.global_batch_size,), jnp.int32, sharding=batch_shards["label"]
      ),
  }
  step = train.jit_train_step(c, mesh, model, tx, batch_shards)
  abstract = train_state.abstract_state(c, mesh, model, tx)
  with sharding.mesh_context(c, mesh):
    return c, mesh, step.lower(abstract, batch, jax.random.key(1)).compile()


def main(argv):
  del argv
  gib = 2.0**30
  rows = []
  for policy in _POLICIES.value:
    t0 = time.perf_counter()
    c, mesh, compiled = compiled_step(policy)
    mem = compiled.memory_analysis()
    args, temp = mem.argument_size_in_bytes, mem.temp_size_in_bytes
    out, alias = mem.output_size_in_bytes, mem.alias_size_in_bytes
    peak = args + out - alias + temp
    rows.append((policy, args / gib, temp / gib, peak / gib, time.perf_counter() - t0))
    print(rows[-1], flush=True)
  per_device = c.global_batch_size // sharding.batch_devices(c, mesh)
  print(f"\npaper DiT, depth {c.model.depth}, model.dtype {c.model.dtype} (parameters"
        f" {c.model.param_dtype}), global batch {c.global_batch_size} ({per_device} per device),"
        f" mesh {dict(mesh.shape)} on {jax.devices()[0].platform}\n")
  print("| remat policy | arguments GiB | temporaries GiB | peak GiB per device | compile s |")
  print("|---|---|---|---|---|")
  for policy, a, t, p, s in rows:
    print(f"| {policy} | {a:.2f} | {t:.2f} | {p:.2f} | {s:.0f} |")


if __name__ == "__main__":
  app.run(main)
