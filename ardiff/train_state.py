"""The train state: optimizer, learning-rate schedule, EMA, and the state created sharded.

State is a plain dict {"step", "params", "opt_state", "ema_params"}. Its layout comes from one
`jax.eval_shape` of the init (abstract_state): the state is created directly in that layout,
and checkpoints and exports are restored onto it. Training, generation, evaluation and the
benchmarks all build the state from here, so none of them needs the trainer.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from ardiff import sharding
from ardiff.models import build_model


def lr_schedule(config) -> optax.Schedule:
  """The learning rate by step: an optional linear warm-up, then constant (the paper's) or a
  cosine decay to optimizer.final_lr_fraction of it at num_train_steps (short runs such as the
  demo end sharper when the rate falls at the end)."""
  o = config.optimizer
  if o.schedule == "constant":
    lr = optax.constant_schedule(o.learning_rate)
  elif o.schedule == "cosine":
    lr = optax.cosine_decay_schedule(
        o.learning_rate, max(config.num_train_steps - o.warmup_steps, 1), alpha=o.final_lr_fraction
    )
  else:
    raise ValueError(f"Unknown optimizer.schedule {o.schedule!r}: use 'constant' or 'cosine'.")
  if o.warmup_steps:
    lr = optax.join_schedules(
        [optax.linear_schedule(0.0, o.learning_rate, o.warmup_steps), lr], [o.warmup_steps]
    )
  return lr


def make_optimizer(config) -> optax.GradientTransformation:
  o = config.optimizer
  return optax.chain(
      optax.clip_by_global_norm(o.grad_clip),
      optax.adamw(lr_schedule(config), b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay),
  )


def ema_decay(config, step):
  """EMA decay with the reference's warm-up: min(decay, (1 + n) / (10 + n)), n = updates made
  including this one."""
  n = step.astype(jnp.float32) + 1.0
  return jnp.minimum(config.optimizer.ema_decay, (1.0 + n) / (10.0 + n))


def update_ema(config, step, ema_params, params):
  d = ema_decay(config, step)
  return jax.tree.map(lambda e, p: d * e + (1.0 - d) * p, ema_params, params)


def _dummy_inputs(config, batch_size=1):
  m = config.model
  x = jnp.zeros((batch_size, m.num_frames, m.tokens_per_frame, m.in_channels), jnp.float32)
  t = jnp.zeros((batch_size, m.num_frames), jnp.int32)
  labels = jnp.zeros((batch_size,), jnp.int32) if m.num_classes else None
  return x, t, labels


def _init_boxed(config, model, tx, rng):
  params = model.init(rng, *_dummy_inputs(config))["params"]
  return {
      "step": jnp.zeros((), jnp.int32),
      "params": params,
      "opt_state": tx.init(params),
      "ema_params": params,
  }


def abstract_from_init(config, mesh, init_boxed):
  """ShapeDtypeStructs with shardings of the (boxed) tree that init_boxed(rng) builds: the
  layout from the logical axis names and config.mesh.logical_axis_rules. Any trainer's state."""
  boxed = jax.eval_shape(init_boxed, jax.random.key(0))
  with jax.set_mesh(mesh):
    shards = sharding.logical_shardings(boxed, mesh, sharding.logical_rules(config))
  return jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), nn.unbox(boxed), shards
  )


def create_from_init(config, mesh, init_boxed, rng, abstract=None):
  """The tree of init_boxed(rng) created directly in its sharded layout (one jit)."""
  abstract = abstract or abstract_from_init(config, mesh, init_boxed)
  shards = jax.tree.map(lambda a: a.sharding, abstract)
  init = jax.jit(lambda r: nn.unbox(init_boxed(r)), out_shardings=shards)
  with sharding.mesh_context(config, mesh):
    return init(rng)


def abstract_state(config, mesh, model=None, tx=None):
  """ShapeDtypeStructs of the train state with their shardings (from the logical axis names):
  the layout state is created in, and the target for restoring a checkpoint."""
  model = model or build_model(config)
  tx = tx or make_optimizer(config)
  return abstract_from_init(config, mesh, functools.partial(_init_boxed, config, model, tx))


def state_shardings(config, mesh, model=None, tx=None):
  """The NamedSharding of every leaf of the train state."""
  return jax.tree.map(lambda a: a.sharding, abstract_state(config, mesh, model, tx))


def create_train_state(config, mesh, rng):
  """Parameters, optimizer state and EMA created directly in their sharded layout."""
  model, tx = build_model(config), make_optimizer(config)
  return create_from_init(config, mesh, functools.partial(_init_boxed, config, model, tx), rng)
