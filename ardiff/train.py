"""Training: the sharded state, the jitted train step (FoPP inside XLA), and the loop.

State is a plain dict {"step", "params", "opt_state", "ema_params"}: created already sharded
(eval_shape, then jit with out_shardings), updated by one jit with the state donated.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from ardiff import diffusion
from ardiff import sharding
from ardiff import timesteps
from ardiff.data import patches
from ardiff.models import build_model


def lr_schedule(config) -> optax.Schedule:
  """Constant learning rate (the paper's), after an optional linear warm-up."""
  o = config.optimizer
  lr = optax.constant_schedule(o.learning_rate)
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


def model_inputs(config, batch) -> tuple[jax.Array, jax.Array | None]:
  """The clean tokens [B, F, L, C] and labels of a batch, on device inside jit.

  Pixel batches carry uint8 frames "video" [B, F, H, W, 3], cut into patches here; latent
  batches (pre-extracted autoencoder tokens, the paper's stage 2) carry "latents" [B, F, L, C].
  """
  if "latents" in batch:
    x0 = batch["latents"].astype(jnp.float32)
  else:
    x0 = patches.patchify(patches.to_model_input(batch["video"]), config.data.patch_size)
  labels = batch["label"].astype(jnp.int32) if config.model.num_classes else None
  return x0, labels


def check_config(config):
  """Errors that say what to change, before anything is built."""
  from ardiff.data import datasets  # pylint: disable=g-import-not-at-top

  latent = config.model.tokens_per_frame != (config.data.resolution // config.data.patch_size) ** 2
  try:
    datasets.check_available(config.data.name)
  except NotImplementedError as e:
    if latent:
      raise NotImplementedError(
          f"{e}\nThis config also trains on latent tokens ({config.model.tokens_per_frame} x"
          f" {config.model.in_channels} per frame) of the frame autoencoder (stage 1), which is"
          " not available yet either."
      ) from e
    raise
  m = config.model
  if m.num_frames != config.num_frames:
    raise ValueError(
        f"config.num_frames={config.num_frames} (clip length) differs from"
        f" config.model.num_frames={m.num_frames} (the model's window): set them equal."
    )
  if latent:
    raise ValueError(
        "config.model.tokens_per_frame does not match data.resolution / data.patch_size:"
        " pixel-space training cuts frames into patches. Latent configs need the frame"
        " autoencoder, which is not available yet in this version."
    )
  if config.data.resolution % config.data.patch_size:
    raise ValueError(
        f"data.resolution={config.data.resolution} is not a multiple of"
        f" data.patch_size={config.data.patch_size}."
    )
  if config.train_timesteps not in timesteps.TRAIN_SAMPLERS:
    raise ValueError(
        f"config.train_timesteps={config.train_timesteps!r}: use one of {timesteps.TRAIN_SAMPLERS}."
    )


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


def abstract_state(config, mesh, model=None, tx=None):
  """ShapeDtypeStructs of the train state with their shardings (from the logical axis names):
  the layout state is created in, and the target for restoring a checkpoint."""
  model = model or build_model(config)
  tx = tx or make_optimizer(config)
  boxed = jax.eval_shape(functools.partial(_init_boxed, config, model, tx), jax.random.key(0))
  with jax.set_mesh(mesh):
    shards = sharding.logical_shardings(boxed, mesh, sharding.logical_rules(config))
  return jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), nn.unbox(boxed), shards
  )


def state_shardings(config, mesh, model=None, tx=None):
  """The NamedSharding of every leaf of the train state."""
  return jax.tree.map(lambda a: a.sharding, abstract_state(config, mesh, model, tx))


def create_train_state(config, mesh, rng):
  """Parameters, optimizer state and EMA created directly in their sharded layout."""
  model, tx = build_model(config), make_optimizer(config)
  shards = state_shardings(config, mesh, model, tx)
  init = jax.jit(lambda r: nn.unbox(_init_boxed(config, model, tx, r)), out_shardings=shards)
  with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.logical_rules(config)):
    return init(rng)


def train_step(config, model, tx, state, batch, rng):
  """One update. Pure: everything random comes from rng folded with the step."""
  step = state["step"]
  rng = jax.random.fold_in(rng, step)
  k_t, k_noise, k_drop = jax.random.split(rng, 3)
  x0, labels = model_inputs(config, batch)
  b, f = x0.shape[:2]
  sched = diffusion.schedule_from_config(config.diffusion)
  param = config.diffusion.parameterization

  # Per-frame timesteps (FoPP by default), drawn inside the compiled step.
  t = timesteps.sample_train_timesteps(
      k_t, config.train_timesteps, b, f, config.diffusion.num_timesteps
  )
  noise = jax.random.normal(k_noise, x0.shape, x0.dtype)
  x_t = diffusion.q_sample(sched, x0, t, noise)
  tgt = diffusion.target(sched, param, x0, noise, t)
  weights = diffusion.timestep_weights(sched, config.diffusion.loss_weighting, param)
  if labels is not None:  # classifier-free guidance: sometimes train with the null label
    drop = jax.random.uniform(k_drop, (b,)) < config.label_drop
    labels = jnp.where(drop, config.model.num_classes, labels)

  def loss_fn(params):
    out = model.apply({"params": params}, x_t, t, labels)
    return diffusion.loss_and_metrics(out, tgt, t, weights)

  (loss, loss_by_frame), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
  updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
  params = optax.apply_updates(state["params"], updates)
  d = ema_decay(config, step)
  ema = jax.tree.map(lambda e, p: d * e + (1.0 - d) * p, state["ema_params"], params)
  new_state = {"step": step + 1, "params": params, "opt_state": opt_state, "ema_params": ema}
  metrics = {
      "loss": loss,
      "loss_by_frame": loss_by_frame,
      "grad_norm": optax.tree.norm(grads),
      "learning_rate": jnp.asarray(lr_schedule(config)(step), jnp.float32),
  }
  return new_state, metrics


def make_train_step(config, mesh):
  """train_step jitted once with in/out shardings and the state donated."""
  model, tx = build_model(config), make_optimizer(config)
  shards = state_shardings(config, mesh, model, tx)
  batch_shards = {
      "video": sharding.batch_sharding(config, mesh, 5),
      "label": sharding.batch_sharding(config, mesh, 1),
  }
  rep = sharding.replicated(mesh)
  jitted = jax.jit(
      functools.partial(train_step, config, model, tx),
      in_shardings=(shards, batch_shards, rep),
      out_shardings=(shards, rep),
      donate_argnums=(0,),
  )

  def step_fn(state, batch, rng):
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.logical_rules(config)):
      return jitted(state, batch, rng)

  return step_fn


# ----------------------------------------------------------------------------------------------
# The loop.


class NonFiniteLossError(FloatingPointError):
  pass


def reconstruct(config, model, params, batch, rng):
  """Denoised reconstructions for the training summaries: each frame noised to a timestep that
  grows along the clip (as in AR-Diffusion), then predicted in one model call.

  Returns uint8 [B, F, H, W, 3]: the clean clip, the noised clip and the prediction stacked
  side by side along the width.
  """
  x0, labels = model_inputs(config, batch)
  b, f = x0.shape[:2]
  sched = diffusion.schedule_from_config(config.diffusion)
  t = jnp.broadcast_to(
      jnp.linspace(0, config.diffusion.num_timesteps * 0.6, f).astype(jnp.int32), (b, f)
  )
  x_t = diffusion.q_sample(sched, x0, t, jax.random.normal(rng, x0.shape))
  out = model.apply({"params": params}, x_t, t, labels)
  pred, _ = diffusion.to_x0_eps(sched, config.diffusion.parameterization, x_t, t, out)
  res = config.data.resolution
  to_video = lambda z: patches.to_uint8(patches.unpatchify(z, config.data.patch_size, res, res))
  return jnp.concatenate([to_video(x0), to_video(x_t), to_video(pred)], axis=3)


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains config.num_train_steps steps in workdir, resuming from its latest checkpoint.

  Returns the last reported scalars. Writes TensorBoard summaries to workdir, checkpoints to
  workdir/checkpoints and the EMA parameters to workdir/export.
  """
  # Imported here so that the step functions above need none of the host-side stack.
  import os  # pylint: disable=g-import-not-at-top
  import signal  # pylint: disable=g-import-not-at-top
  import time  # pylint: disable=g-import-not-at-top

  from absl import logging  # pylint: disable=g-import-not-at-top
  from clu import metric_writers, periodic_actions  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  import ml_collections  # pylint: disable=g-import-not-at-top

  from ardiff import checkpoint, generate, summaries  # pylint: disable=g-import-not-at-top
  from ardiff.data import pipeline  # pylint: disable=g-import-not-at-top
  from ardiff.evaluation import run as run_eval  # pylint: disable=g-import-not-at-top

  check_config(config)
  mesh = sharding.make_mesh(config.mesh)
  sharding.check_global_batch(config, mesh)
  os.makedirs(workdir, exist_ok=True)
  lead = jax.process_index() == 0
  writer = metric_writers.create_default_writer(workdir, just_logging=not lead)

  data_iter = pipeline.create_train_iterator(config)
  ckpt = checkpoint.Checkpointer(workdir, keep=config.keep_checkpoints)
  init_rng, step_rng, preview_rng = jax.random.split(jax.random.key(config.seed), 3)
  state = ckpt.restore(abstract_state(config, mesh), data_iter)
  if state is None:
    state = create_train_state(config, mesh, init_rng)
    if lead:
      n = sum(a.size for a in jax.tree.leaves(state["params"]))
      print(f"Training from scratch: {n:,} parameters, mesh {dict(mesh.shape)}.", flush=True)
  else:
    print(f"Resumed from step {int(state['step'])} ({ckpt.directory}).", flush=True)
  start = int(state["step"])
  step_fn = make_train_step(config, mesh)
  model = build_model(config)
  # Replicated output: every process can read it (the batch itself is split across hosts).
  preview_fn = jax.jit(functools.partial(reconstruct, config, model),
                       out_shardings=sharding.replicated(mesh))
  # Samples for the summaries: a few videos of config.sampling's length, no prefix.
  preview_config = ml_collections.ConfigDict(config.to_dict())
  preview_config.sampling.num_videos = preview_config.sampling.batch_size = 4
  preview_config.sampling.prefix_frames = 0

  # Preemption (SIGTERM): finish the step in flight, save, exit cleanly. With several processes
  # JAX's own preemption notifier (set up by jax.distributed.initialize) catches the signal and
  # the processes agree on the step; a Python handler here would replace it.
  preempted = []
  previous_handler = None
  if jax.process_count() == 1:
    previous_handler = signal.signal(signal.SIGTERM, lambda *_: preempted.append(True))
  report = periodic_actions.ReportProgress(num_train_steps=config.num_train_steps, writer=writer)
  history, scalars = [], {}
  t_last, s_last = time.time(), start

  def flush(step):
    """Reads the metrics of the steps since the last flush: the only host sync of the loop."""
    nonlocal history, t_last, s_last
    if not history:
      return {}
    values = jax.device_get([m for _, m in history])
    for (s, _), v in zip(history, values):
      if not np.isfinite(v["loss"]) or not np.isfinite(v["grad_norm"]):
        last = ckpt.latest_step()
        raise NonFiniteLossError(
            f"The loss became {v['loss']} (grad norm {v['grad_norm']}) at step {s}. Training"
            f" stopped without saving; the last good checkpoint is "
            + (f"step {last} in {ckpt.directory}" if last is not None else "none (no checkpoint yet)")
            + ". Lower config.optimizer.learning_rate or grad_clip, or check the data, then"
            " rerun with the same --workdir to resume from it."
        )
    out = summaries.scalars_from_metrics(values)
    now = time.time()
    rate = (step - s_last) / max(now - t_last, 1e-9)
    out["steps_per_sec"] = rate
    t_last, s_last, history = now, step, []
    writer.write_scalars(step, out)
    if lead:
      eta = (config.num_train_steps - step) / max(rate, 1e-9)
      print(
          f"step {step}/{config.num_train_steps}  loss {out['loss']:.4f}  grad_norm"
          f" {out['grad_norm']:.3f}  {rate:.2f} steps/s  ETA {time.strftime('%H:%M:%S', time.gmtime(eta))}",
          flush=True,
      )
    return out

  try:
    batch = None
    for step in range(start, config.num_train_steps):
      batch = sharding.global_batch(next(data_iter), config, mesh)
      state, metrics = step_fn(state, batch, step_rng)
      s = step + 1
      history.append((s, metrics))
      if len(history) > 2:
        # At most two steps in flight: bounds how far Python runs ahead of the devices, so a
        # SIGTERM is acted on within a step or two (no data comes back to the host here).
        history[-3][1]["loss"].block_until_ready()
      report(s)
      last = s == config.num_train_steps
      if jax.process_count() > 1:
        # Every process must stop at the same step: JAX's preemption sync point agrees on it.
        stop = ckpt.manager.reached_preemption(s)
      else:
        stop = bool(preempted)  # read once: the signal may arrive at any point below
      save_now = last or stop or s % config.checkpoint_every_steps == 0
      sample_now = config.sample_every_steps and (s % config.sample_every_steps == 0 or last)
      eval_now = config.eval_every_steps and (s % config.eval_every_steps == 0 or last)
      if save_now or sample_now or eval_now or s % config.log_every_steps == 0:
        # A non-finite loss stops here: before any save, sample or evaluation.
        scalars = flush(s) or scalars
      if sample_now:
        videos = np.asarray(jax.device_get(preview_fn(state["ema_params"], batch, preview_rng)))
        summaries.write_video(writer, s, "reconstructions", videos[:4], scale=2)
        summaries.write_video(writer, s, "samples", generate.generate(
            preview_config, state["ema_params"], preview_config.sampling.num_videos, progress=False
        ), scale=2)
      if eval_now:
        metrics = run_eval.evaluate_params(
            config, state["ema_params"], step=s,
            num_videos=config.eval.num_videos_during_training, progress=False,
        )
        run_eval.write_metrics(workdir, metrics, writer, name=f"metrics_step{s:08d}.json")
        if lead:
          print(f"step {s}: FVD{metrics['num_frames']} {metrics['fvd']:.2f}", flush=True)
      if save_now:
        ckpt.save(s, state, data_iter, force=True)
      if stop:
        print(f"SIGTERM: saved checkpoint {s} in {ckpt.directory}; exiting.", flush=True)
        break
    ckpt.wait()
    if int(state["step"]) >= config.num_train_steps:
      path = checkpoint.export_params(workdir, state["ema_params"], config)
      if lead:
        print(f"Exported EMA parameters to {path}.", flush=True)
  finally:
    ckpt.wait()
    ckpt.close()
    writer.flush()
    if previous_handler is not None:
      signal.signal(signal.SIGTERM, previous_handler)
    if hasattr(data_iter, "close"):
      data_iter.close()
  if lead:
    print(f"TensorBoard logs: {os.path.abspath(workdir)}  (tensorboard --logdir {workdir})", flush=True)
  return scalars
