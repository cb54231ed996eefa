"""Device mesh from the config, logical-axis rules, and the shardings of state and batch.

Data parallel, FSDP and tensor parallel are each a change of config.mesh: the model names its
axes (batch, embed, heads, mlp, ...) and config.mesh.logical_axis_rules maps names to mesh axes.
"""

import contextlib
import math

from absl import logging
import flax.linen as nn
import jax
from jax.sharding import NamedSharding, PartitionSpec as P
import numpy as np


def make_mesh(mesh_config, devices=None) -> jax.sharding.Mesh:
  """A mesh of config.mesh.shape over config.mesh.axes; one size may be -1 (the rest)."""
  devices = list(jax.devices() if devices is None else devices)
  shape, axes = list(mesh_config.shape), tuple(mesh_config.axes)
  if len(shape) != len(axes):
    raise ValueError(f"config.mesh.shape {tuple(shape)} and config.mesh.axes {axes} differ in length.")
  if shape.count(-1) > 1:
    raise ValueError(f"config.mesh.shape {tuple(shape)}: at most one size may be -1.")
  known = math.prod(s for s in shape if s != -1)
  if -1 in shape:
    if known <= 0 or len(devices) % known:
      raise ValueError(
          f"config.mesh.shape {tuple(shape)} cannot be filled from {len(devices)} devices: the"
          f" fixed sizes multiply to {known}, which must divide the device count."
      )
    shape[shape.index(-1)] = len(devices) // known
  if math.prod(shape) != len(devices):
    raise ValueError(
        f"config.mesh.shape {tuple(mesh_config.shape)} needs {math.prod(shape)} devices but"
        f" {len(devices)} are available: set e.g. --config.mesh.shape='(-1, 1, 1)' (one size"
        " -1 takes the devices that are left)."
    )
  # Auto axes: shardings propagate through the step from the in/out shardings given to jit.
  return jax.make_mesh(
      tuple(shape), axes, axis_types=(jax.sharding.AxisType.Auto,) * len(axes), devices=devices
  )


def logical_rules(config) -> tuple:
  return tuple((name, tuple(a) if isinstance(a, (list, tuple)) else a)
               for name, a in config.mesh.logical_axis_rules)


@contextlib.contextmanager
def mesh_context(config, mesh):
  """The mesh and config's logical axis rules: where jitted steps are traced and run."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(logical_rules(config)):
    yield


def batch_axes(config) -> tuple:
  """Mesh axes that split the batch (the "batch" rule)."""
  rule = dict(logical_rules(config)).get("batch")
  if rule is None:
    return ()
  return rule if isinstance(rule, tuple) else (rule,)


def batch_sharding(config, mesh, ndim: int) -> NamedSharding:
  """Leading axis over the batch axes, the rest replicated."""
  return NamedSharding(mesh, P(batch_axes(config), *([None] * (ndim - 1))))


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_devices(config, mesh) -> int:
  """How many ways the batch axes split a batch."""
  return math.prod(mesh.shape[a] for a in batch_axes(config))


def check_global_batch(config, mesh):
  n = batch_devices(config, mesh)
  if config.global_batch_size % n:
    raise ValueError(
        f"global_batch_size={config.global_batch_size} is not divisible by the {n} devices of"
        f" the batch axes {batch_axes(config)} of mesh {dict(mesh.shape)}: change"
        " --config.global_batch_size or --config.mesh.shape."
    )
  if config.global_batch_size % jax.process_count():
    raise ValueError(
        f"global_batch_size={config.global_batch_size} is not divisible by the"
        f" {jax.process_count()} processes."
    )


def _fit(spec: P, shape, mesh) -> P:
  """Drops mesh axes from dimensions they do not divide (that dimension is then replicated)."""
  out = []
  for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    names = () if axes is None else (axes if isinstance(axes, tuple) else (axes,))
    size = math.prod(mesh.shape[a] for a in names)
    if size > 1 and dim % size:
      logging.warning("Dimension %d does not split over mesh axes %s: replicated.", dim, names)
      axes = None
    out.append(axes)
  return P(*out)


def logical_shardings(abstract_boxed, mesh, rules):
  """NamedShardings for a tree whose leaves are LogicallyPartitioned (or plain) abstract arrays.

  Returns a tree of the unboxed structure: one NamedSharding per array.
  """
  specs = nn.get_partition_spec(abstract_boxed)
  mesh_specs = nn.logical_to_mesh(specs, rules)
  shapes = nn.unbox(abstract_boxed)
  return jax.tree.map(
      lambda s, a: NamedSharding(mesh, _fit(s, a.shape, mesh)),
      mesh_specs, shapes, is_leaf=lambda x: isinstance(x, P),
  )


def global_batch(local: dict, config, mesh) -> dict:
  """Host-local numpy batch -> global jax arrays sharded along the batch axes."""
  return {
      k: jax.make_array_from_process_local_data(
          batch_sharding(config, mesh, np.ndim(v)), v,
          global_shape=(config.global_batch_size,) + tuple(np.shape(v)[1:]),
      )
      for k, v in local.items()
  }
