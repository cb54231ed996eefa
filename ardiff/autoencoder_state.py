"""The frame autoencoder's train state, and loading a stage-1 run's weights.

State: {"step", "params", "opt_state", "disc_params", "disc_opt_state"} (the autoencoder, its
PatchGAN discriminator, and their optimizers), created sharded from one eval_shape like the
diffusion model's (train_state.py). Extraction, generation and evaluation load a stage-1 run's
parameters from here, without the trainer.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ardiff import checkpoint
from ardiff import sharding
from ardiff import train_state
from ardiff.models import autoencoder as autoencoder_lib
from ardiff.models import discriminator as discriminator_lib


def build_models(config):
  ae = config.autoencoder
  return (autoencoder_lib.build_autoencoder(ae),
          discriminator_lib.PatchDiscriminator(ae.loss.disc_channels, ae.loss.disc_layers))


def is_temporal(path) -> bool:
  """Whether a parameter (its tree path) belongs to the temporal layers."""
  return any("temporal" in str(getattr(k, "key", k)) for k in path)


def make_optimizers(config):
  """(autoencoder, discriminator) optimizers: AdamW of config.optimizer each; with
  autoencoder.train_only_temporal every other parameter gets a zero update."""
  tx = train_state.make_optimizer(config)
  if config.autoencoder.train_only_temporal:
    labels = lambda params: jax.tree_util.tree_map_with_path(
        lambda path, _: "train" if is_temporal(path) else "frozen", params,
        is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
    tx = optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)
  return tx, train_state.make_optimizer(config)


def _init_boxed(config, model, disc, tx, tx_disc, rng):
  r = config.data.resolution
  k_model, k_disc = jax.random.split(rng)
  params = model.init(k_model, jnp.zeros((1, config.num_frames, r, r, 3)))["params"]
  disc_params = disc.init(k_disc, jnp.zeros((1, r, r, 3)))["params"]
  return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params),
          "disc_params": disc_params, "disc_opt_state": tx_disc.init(disc_params)}


def abstract_state(config, mesh):
  model, disc = build_models(config)
  init = functools.partial(_init_boxed, config, model, disc, *make_optimizers(config))
  return train_state.abstract_from_init(config, mesh, init)


def create_state(config, mesh, rng):
  """A new state; with autoencoder.init_from, its parameters taken from that stage-1 run (the
  temporal layers, which it lacks, keep their identity initialisation)."""
  model, disc = build_models(config)
  init = functools.partial(_init_boxed, config, model, disc, *make_optimizers(config))
  state = train_state.create_from_init(config, mesh, init, rng)
  if config.autoencoder.init_from:
    state["params"] = load_into(state["params"], config.autoencoder.init_from, mesh)
    state["opt_state"] = jax.jit(
        make_optimizers(config)[0].init,
        out_shardings=jax.tree.map(lambda a: a.sharding, state["opt_state"]))(state["params"])
  return state


def load_into(params, workdir: str, mesh):
  """params with every array that the stage-1 run in workdir also has replaced by its value.

  Only temporal layers may be new; anything else that differs is an error naming the keys.
  """
  source, _, _ = load_params(workdir, mesh)
  source = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_flatten_with_path(source)[0]}
  leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
  names = [jax.tree_util.keystr(p) for p, _ in leaves]
  missing = [n for n in names if n not in source and "temporal" not in n]
  unexpected = sorted(set(source) - set(names))
  mis_shaped = [n for n, (_, v) in zip(names, leaves) if n in source and source[n].shape != v.shape]
  if missing or unexpected or mis_shaped:
    raise ValueError(
        f"autoencoder.init_from={workdir} does not match this config's autoencoder: missing"
        f" {missing}, unexpected {unexpected}, shapes differ {mis_shaped}. Its config.json"
        " holds the sizes it was trained with.")
  out = [jax.device_put(source[n], v.sharding) if n in source else v
         for n, (_, v) in zip(names, leaves)]
  return jax.tree_util.tree_unflatten(treedef, out)


def load_params(workdir: str, mesh=None):
  """The autoencoder parameters of a stage-1 workdir (its latest checkpoint, else its export),
  sharded on mesh; the config it was trained with (workdir/config.json); the step (None: the
  export)."""
  config = checkpoint.run_config(workdir)
  mesh = mesh or sharding.make_mesh(config.mesh)
  params, step = checkpoint.load_params(workdir, abstract_state(config, mesh), "params")
  return params, config, step



def param_shardings(params):
  return jax.tree.map(lambda a: a.sharding, params)


def replicated_like(params):
  """The replicated sharding on the mesh params live on: inputs every process holds whole and
  outputs every process can read (with several processes, host arrays and results must be)."""
  return sharding.replicated(jax.tree.leaves(params)[0].sharding.mesh)


def parameter_count(config) -> int:
  """The autoencoder's parameter count, from jax.eval_shape (nothing is allocated)."""
  model, _ = build_models(config)
  r = config.data.resolution
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 1, r, r, 3)))
  return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(nn.unbox(shapes)["params"]))


def reconstruct(workdir: str, clips: np.ndarray, batch_size: int = 4) -> np.ndarray:
  """uint8 clips [N, F, H, W, 3] through the autoencoder of workdir (posterior means, its own
  decoder, clipped to [0, 1]): uint8 reconstructions of the same shape."""
  params, run_config, _ = load_params(workdir)
  model = autoencoder_lib.build_autoencoder(run_config.autoencoder)
  rep = replicated_like(params)

  @functools.partial(jax.jit, in_shardings=(param_shardings(params), rep), out_shardings=rep)
  def apply(params, video):
    rec, _, _ = model.apply({"params": params}, video.astype(jnp.float32) / 255.0)
    return autoencoder_lib.to_uint8(rec)

  return np.concatenate([np.asarray(apply(params, clips[i:i + batch_size]))
                         for i in range(0, len(clips), batch_size)])
