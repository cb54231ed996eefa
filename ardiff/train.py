"""Training the diffusion model: the jitted train step (FoPP inside XLA) and its loop.

The state (ardiff/train_state.py) is updated by one jit with the state donated; the loop is
built from the shared parts of ardiff/loop.py, which the frame autoencoder's trainer uses too.
"""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from ardiff import checkpoint
from ardiff import diffusion
from ardiff import generate
from ardiff import loop
from ardiff import sharding
from ardiff import summaries
from ardiff import timesteps
from ardiff import train_state
from ardiff.data import datasets
from ardiff.data import latents
from ardiff.data import patches
from ardiff.data import pipeline
from ardiff.evaluation import run as run_eval
from ardiff.models import build_model


def model_inputs(config, batch) -> tuple[jax.Array, jax.Array | None]:
  """The clean tokens [B, F, L, C] and labels of a batch, on device inside jit.

  Pixel batches carry uint8 frames "video" [B, F, H, W, 3], cut into patches here; latent
  batches (the autoencoder's tokens, the paper's stage 2) carry "latents" [B, F, L, C], each
  as the pipeline made them (latents.stage2_tokens: L2-normalised per token as the paper does,
  scaled by config.latents.scale).
  """
  if "latents" in batch:
    x0 = batch["latents"].astype(jnp.float32)
  else:
    x0 = patches.video_to_tokens(config, batch["video"])
  labels = batch["label"].astype(jnp.int32) if config.model.num_classes else None
  return x0, labels


def check_config(config):
  """Errors that say what to change, before anything is built."""
  m = config.model
  fg = config.diffusion.foreground_weight
  if fg < 0:
    raise ValueError(f"diffusion.foreground_weight={fg}: use 0 (plain MSE) or a positive weight.")
  if config.diffusion.loss not in diffusion.ELEMENT_LOSSES:
    raise ValueError(
        f"diffusion.loss={config.diffusion.loss!r}: use one of {diffusion.ELEMENT_LOSSES}.")
  if config.diffusion.loss == "pseudo_huber" and not config.diffusion.huber_c > 0:
    raise ValueError(f"diffusion.huber_c={config.diffusion.huber_c}: use a positive constant.")
  if not patches.tokens_are_pixels(config):
    if fg:
      raise ValueError(
          f"diffusion.foreground_weight={fg} weighs pixels by their brightness, which latents"
          " do not have: set it to 0 for stage 2 on latents.")
    latents.check_ready(config)  # the latents exist and fit the model (and have a workdir)
    if config.latents.l2_normalize:
      ae = checkpoint.run_config(config.latents.autoencoder_workdir).autoencoder
      if not ae.get("use_l2_norm", True):
        raise ValueError(
            f"The autoencoder in {config.latents.autoencoder_workdir} decodes its latents as"
            " they are (autoencoder.use_l2_norm=False: they carry their norm), so stage 2 must"
            " model them so: set --config.latents.l2_normalize=False.")
  else:
    datasets.check_available(config.data.name, config.data.data_dir, config.data.resolution)
    if config.data.resolution % config.data.patch_size:
      raise ValueError(
          f"data.resolution={config.data.resolution} is not a multiple of"
          f" data.patch_size={config.data.patch_size}."
      )
  if m.num_frames != config.num_frames:
    raise ValueError(
        f"config.num_frames={config.num_frames} (clip length) differs from"
        f" config.model.num_frames={m.num_frames} (the model's window): set them equal."
    )
  if config.train_timesteps not in timesteps.TRAIN_SAMPLERS:
    raise ValueError(
        f"config.train_timesteps={config.train_timesteps!r}: use one of {timesteps.TRAIN_SAMPLERS}."
    )
  if config.fopp_clean_prefix_prob and (
      config.train_timesteps != "fopp" or not 0 < config.fopp_clean_prefix_prob <= 1):
    raise ValueError(
        f"config.fopp_clean_prefix_prob={config.fopp_clean_prefix_prob} needs"
        " train_timesteps='fopp' and a value in [0, 1]."
    )


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
      k_t, config.train_timesteps, b, f, config.diffusion.num_timesteps,
      config.fopp_clean_prefix_prob,
  )
  noise = jax.random.normal(k_noise, x0.shape, x0.dtype)
  x_t = diffusion.q_sample(sched, x0, t, noise)
  tgt = diffusion.target(sched, param, x0, noise, t)
  weights = diffusion.timestep_weights(
      sched, config.diffusion.loss_weighting, param,
      logit_normal=(config.diffusion.logit_normal_mean, config.diffusion.logit_normal_std))
  # Errors on bright pixels weigh more (foreground_weight): under uncertainty the fit leans
  # towards the strokes rather than a dim average of them and the background.
  pixel_weights = None
  if config.diffusion.foreground_weight:
    pixel_weights = 1.0 + config.diffusion.foreground_weight * (x0 + 1.0) / 2.0
  if labels is not None:  # classifier-free guidance: sometimes train with the null label
    drop = jax.random.uniform(k_drop, (b,)) < config.label_drop
    labels = jnp.where(drop, config.model.num_classes, labels)

  def loss_fn(params):
    out = model.apply({"params": params}, x_t, t, labels)
    return diffusion.loss_and_metrics(
        out, tgt, t, weights, pixel_weights, config.diffusion.loss, config.diffusion.huber_c)

  (loss, loss_by_frame), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
  updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
  params = optax.apply_updates(state["params"], updates)
  ema = train_state.update_ema(config, step, state["ema_params"], params)
  new_state = {"step": step + 1, "params": params, "opt_state": opt_state, "ema_params": ema}
  metrics = {
      "loss": loss,
      "loss_by_frame": loss_by_frame,
      "grad_norm": optax.tree.norm(grads),
      "learning_rate": jnp.asarray(train_state.lr_schedule(config)(step), jnp.float32),
  }
  return new_state, metrics


def jit_train_step(config, mesh, model, tx, batch_shards=None):
  """train_step jitted with the state's and the batch's shardings, the state donated (the
  benchmarks lower this same program). Trace and run it under sharding.mesh_context."""
  shards = train_state.state_shardings(config, mesh, model, tx)
  rep = sharding.replicated(mesh)
  return jax.jit(
      functools.partial(train_step, config, model, tx),
      in_shardings=(shards, batch_shards or batch_shardings(config, mesh), rep),
      out_shardings=(shards, rep),
      donate_argnums=(0,),
  )


def make_train_step(config, mesh):
  """train_step jitted once (jit_train_step), called under the mesh and its rules."""
  jitted = jit_train_step(config, mesh, build_model(config), train_state.make_optimizer(config))

  def step_fn(state, batch, rng):
    with sharding.mesh_context(config, mesh):
      return jitted(state, batch, rng)

  return step_fn


# ----------------------------------------------------------------------------------------------
# The loop.


def reconstruct(config, model, params, batch, rng):
  """Denoised reconstructions for the training summaries: each frame noised to a timestep that
  grows along the clip (as in AR-Diffusion), then predicted in one model call.

  Returns tokens [3, B, F, L, C]: the clean clip, the noised clip and the prediction
  (generate.tokens_to_video turns them into frames, through the autoencoder for latents).
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
  return jnp.stack([x0, x_t, pred])


def create_state(config, mesh, rng):
  """A new train state; with config.init_from, its parameters (and their EMA) taken from that
  run or export (fine-tuning, e.g. of a converted released checkpoint), the optimizer fresh."""
  state = train_state.create_train_state(config, mesh, rng)
  if not config.get("init_from"):
    return state
  try:
    params, step = checkpoint.load_inference_params(config, config.init_from, mesh, same_run=False)
  except Exception as e:  # pylint: disable=broad-except  (any failure: say which field)
    raise ValueError(
        f"config.init_from={config.init_from} cannot start this run ({type(e).__name__}: {e})."
        " It must be a workdir with a checkpoint or an export of a model of this config's"
        " config.model (variant and sizes).") from e
  source = f"step {step}" if step is not None else "its export"
  if jax.process_index() == 0:
    print(f"Starting from the parameters of {config.init_from} ({source}).", flush=True)
  shards = jax.tree.map(lambda a: a.sharding, state)
  state["params"] = params
  state["ema_params"] = jax.jit(lambda p: p, out_shardings=shards["ema_params"])(params)
  state["opt_state"] = jax.jit(train_state.make_optimizer(config).init,
                               out_shardings=shards["opt_state"])(params)
  return state


def batch_shardings(config, mesh, latents: bool | None = None) -> dict:
  """The shardings of a global batch: frames or latents (None: as config trains on), and
  labels, split over the batch."""
  if latents is None:
    latents = bool(config.latents.autoencoder_workdir)
  if latents:
    return {"latents": sharding.batch_sharding(config, mesh, 4),
            "label": sharding.batch_sharding(config, mesh, 1)}
  return {"video": sharding.batch_sharding(config, mesh, 5),
          "label": sharding.batch_sharding(config, mesh, 1)}


def _preview_config(config):
  """Samples for the summaries: a few videos of config.sampling's length, no prefix."""
  c = ml_collections.ConfigDict(config.to_dict())
  c.sampling.num_videos = c.sampling.batch_size = 4
  c.sampling.prefix_frames = 0
  return c


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains config.num_train_steps steps in workdir, resuming from its latest checkpoint.

  Returns the last reported scalars. Writes TensorBoard summaries to workdir, checkpoints to
  workdir/checkpoints and the EMA parameters to workdir/export.
  """
  check_config(config)
  mesh = sharding.make_mesh(config.mesh)
  sharding.check_global_batch(config, mesh)
  init_rng, step_rng, preview_rng = jax.random.split(jax.random.key(config.seed), 3)
  run = loop.Run(config, workdir, pipeline.create_train_iterator(config))
  try:
    state = run.restore_or_create(
        train_state.abstract_state(config, mesh),
        lambda: create_state(config, mesh, init_rng))
    train_step_fn = make_train_step(config, mesh)
    # Replicated output: every process can read it (the batch itself is split across hosts).
    preview_fn = jax.jit(functools.partial(reconstruct, config, build_model(config)),
                         out_shardings=sharding.replicated(mesh))
    preview_config = _preview_config(config)

    def write_samples(step, state, batch, **_):
      with run.report.timed("samples"):
        batch = sharding.global_batch(batch, config, mesh)
        tokens = np.asarray(jax.device_get(preview_fn(state["ema_params"], batch, preview_rng)))
        # The clean clip, the noised clip and the prediction side by side.
        videos = np.concatenate([generate.tokens_to_video(config, t[:4]) for t in tokens], axis=3)
        summaries.write_video(run.writer, step, "reconstructions", videos, scale=2)
        summaries.write_video(run.writer, step, "samples", generate.generate(
            preview_config, state["ema_params"], preview_config.sampling.num_videos,
            progress=False), scale=2)

    def evaluate(step, state, **_):
      with run.report.timed("eval"):
        result = run_eval.evaluate_params(config, state["ema_params"], step=step,
                                          num_videos=config.eval.num_videos_during_training,
                                          progress=False)
        run_eval.write_metrics(workdir, result, run.writer, name=f"metrics_step{step:08d}.json")
      if run.lead:
        print(f"step {step}: FVD{result['num_frames']} {result['fvd']:.2f}", flush=True)

    state, _ = run.train(
        state, lambda s, b: train_step_fn(s, sharding.global_batch(b, config, mesh), step_rng),
        [run.every(config.sample_every_steps, write_samples),
         run.every(config.eval_every_steps, evaluate)])
    run.export(state, state["ema_params"], "EMA parameters")
  finally:
    run.close()
  return run.scalars
