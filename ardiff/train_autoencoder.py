"""Training the frame autoencoder (stage 1): `python -m ardiff.main --config=configs/<name>_vae.py`.

Frames (config.num_frames = 1) or clips (the temporal fine-tune) from the same TFDS video
datasets as stage 2. The loss is ardiff/autoencoder_loss.py's: L1 + LPIPS + KL, and after
config.autoencoder.loss.gan_start_step the PatchGAN. One jitted step updates the autoencoder
and then (once the GAN is on) the discriminator on the same batch.

State (autoencoder_state.py): the autoencoder, its discriminator and their optimizers, created
sharded like the diffusion model's; the loop is loop.Run's. The export holds the autoencoder's
parameters.
The temporal fine-tune (autoencoder.temporal, autoencoder.init_from) starts from a stage-1
run's weights and trains only the temporal layers (an optax mask): the encoder, and with it the
latents, stay as they were.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ardiff import autoencoder_loss as losses
from ardiff import autoencoder_state
from ardiff import loop
from ardiff import sharding
from ardiff import summaries
from ardiff import train_state
from ardiff.data import datasets
from ardiff.data import pipeline
from ardiff.evaluation import metrics
from ardiff.models import autoencoder as autoencoder_lib
from ardiff.models import lpips as lpips_lib


def check_config(config):
  """Errors that say what to change, before anything is built."""
  ae = config.autoencoder
  datasets.check_available(config.data.name, config.data.data_dir, config.data.resolution)
  if ae.image_size != config.data.resolution:
    raise ValueError(f"config.autoencoder.image_size={ae.image_size} differs from"
                     f" config.data.resolution={config.data.resolution}: set them equal.")
  if ae.temporal and config.num_frames < 2:
    raise ValueError("The temporal decoder trains on clips: set config.num_frames (e.g. 16).")
  if not ae.temporal and config.num_frames != 1:
    raise ValueError("The per-frame autoencoder trains on single frames: config.num_frames=1.")
  if ae.train_only_temporal and not ae.temporal:
    raise ValueError("autoencoder.train_only_temporal needs autoencoder.temporal=True.")
  if ae.loss.lpips_net == "alexnet" and ae.image_size < metrics.LPIPS_MIN_SIZE:
    raise ValueError(f"AlexNet's LPIPS needs frames of at least {metrics.LPIPS_MIN_SIZE}x"
                     f"{metrics.LPIPS_MIN_SIZE} (its pooling leaves nothing of"
                     f" {ae.image_size}x{ae.image_size}): set autoencoder.loss.lpips_net=vgg16.")
  frames_left = ae.image_size // 2 ** ae.loss.disc_layers
  if ae.loss.gan_start_step >= 0 and frames_left < 4:
    raise ValueError(f"The discriminator's {ae.loss.disc_layers} stride-2 layers leave"
                     f" {frames_left}x{frames_left} of {ae.image_size}x{ae.image_size} frames:"
                     " lower config.autoencoder.loss.disc_layers.")


def frames_in_unit_range(batch) -> jax.Array:
  """uint8 "video" [B, F, H, W, 3] -> float32 in [0, 1], the autoencoder's range."""
  return batch["video"].astype(jnp.float32) / 255.0


def _replace_last_layer(params, last):
  return {**params, "pixel_decoder": {**params["pixel_decoder"], "conv_out": last}}


def train_step(config, model, disc, tx, tx_disc, lpips_model, state, batch, rng, lpips_params):
  """One update of the autoencoder and (with the GAN on) of the discriminator. Pure."""
  lc = config.autoencoder.loss
  step = state["step"]
  k_post = jax.random.fold_in(rng, step)
  x = frames_in_unit_range(batch)  # [B, F, H, W, 3]
  gan_on = (lc.gan_start_step >= 0) & (step >= lc.gan_start_step)
  disc_logits = lambda dp, frames: disc.apply(
      {"params": dp}, losses.to_signed(frames.reshape((-1,) + frames.shape[-3:])))

  def reconstruction_loss(rec):
    l1 = losses.l1(x, rec).mean()
    lp = losses.lpips(lpips_model, lpips_params, x, rec).mean()
    return lc.l1_weight * l1 + lc.lpips_weight * lp, (l1, lp)

  def loss_fn(params):
    apply = lambda *a, method: model.apply({"params": params}, *a, method=method)
    mean, logvar = apply(x, method="encode")
    z = mean
    if lc.sample_posterior:
      z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(k_post, mean.shape)
    h = apply(z, method="decode_features")
    # The last layer as a function of its own parameters: the GAN's adaptive weight compares
    # the two losses' gradients there.
    output = lambda last: model.apply({"params": _replace_last_layer(params, last)}, h,
                                      method="decode_output")
    last = params["pixel_decoder"]["conv_out"]
    rec = output(last)
    rec_loss, (l1, lp) = reconstruction_loss(rec)
    kl = losses.kl(mean, logvar).mean()

    def gan_term(_):
      g = losses.generator_gan_loss(disc_logits(state["disc_params"], rec))
      rec_grad = jax.grad(lambda p: reconstruction_loss(output(p))[0])(last)["kernel"]
      gan_grad = jax.grad(lambda p: losses.generator_gan_loss(
          disc_logits(state["disc_params"], output(p))))(last)["kernel"]
      weight = losses.adaptive_weight(rec_grad, gan_grad) * lc.gan_weight
      return weight * g, (g, weight)

    zero = jnp.zeros((), jnp.float32)
    gan, (g, weight) = jax.lax.cond(gan_on, gan_term, lambda _: (zero, (zero, zero)), None)
    loss = rec_loss + lc.kl_weight * kl + gan
    aux = {"l1": l1, "lpips": lp, "kl": kl, "gan_generator": g, "gan_weight": weight,
           "psnr": losses.psnr(x, rec).mean()}
    return loss, (aux, rec)

  (loss, (aux, rec)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
  updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
  params = optax.apply_updates(state["params"], updates)

  def disc_update(_):
    rec_fixed = jax.lax.stop_gradient(rec)
    d_loss_fn = lambda dp: losses.hinge_discriminator_loss(disc_logits(dp, x),
                                                           disc_logits(dp, rec_fixed))
    d_loss, d_grads = jax.value_and_grad(d_loss_fn)(state["disc_params"])
    d_updates, d_opt = tx_disc.update(d_grads, state["disc_opt_state"], state["disc_params"])
    return optax.apply_updates(state["disc_params"], d_updates), d_opt, d_loss

  keep = lambda _: (state["disc_params"], state["disc_opt_state"], jnp.zeros((), jnp.float32))
  disc_params, disc_opt_state, d_loss = jax.lax.cond(gan_on, disc_update, keep, None)
  new_state = {"step": step + 1, "params": params, "opt_state": opt_state,
               "disc_params": disc_params, "disc_opt_state": disc_opt_state}
  metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), "gan_discriminator": d_loss,
             "learning_rate": jnp.asarray(train_state.lr_schedule(config)(step), jnp.float32),
             **aux}
  return new_state, metrics


def make_train_step(config, mesh):
  """train_step jitted once with in/out shardings, the state donated; LPIPS's weights are an
  argument (not constants baked into the program)."""
  model, disc = autoencoder_state.build_models(config)
  tx, tx_disc = autoencoder_state.make_optimizers(config)
  lpips_model, lpips_params = lpips_lib.load(config.autoencoder.loss.lpips_net)
  shards = jax.tree.map(lambda a: a.sharding, autoencoder_state.abstract_state(config, mesh))
  rep = sharding.replicated(mesh)
  jitted = jax.jit(
      functools.partial(train_step, config, model, disc, tx, tx_disc, lpips_model),
      in_shardings=(shards, {"video": sharding.batch_sharding(config, mesh, 5),
                             "label": sharding.batch_sharding(config, mesh, 1)}, rep, rep),
      out_shardings=(shards, rep),
      donate_argnums=(0,),
  )
  lpips_params = jax.device_put(lpips_params, rep)

  def step_fn(state, batch, rng):
    with sharding.mesh_context(config, mesh):
      return jitted(state, batch, rng, lpips_params)

  return step_fn


def reconstruct(config, model, params, batch):
  """uint8 [B, F, H, W * 2, 3]: each input next to its reconstruction (posterior mean)."""
  x = frames_in_unit_range(batch)
  rec, _, _ = model.apply({"params": params}, x)
  return jnp.concatenate([autoencoder_lib.to_uint8(x), autoencoder_lib.to_uint8(rec)], axis=3)


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains the autoencoder of config for config.num_train_steps steps in workdir (resuming),
  then exports its parameters to workdir/export. Returns the last reported scalars."""
  check_config(config)
  mesh = sharding.make_mesh(config.mesh)
  sharding.check_global_batch(config, mesh)
  init_rng, step_rng = jax.random.split(jax.random.key(config.seed))
  run = loop.Run(config, workdir, pipeline.create_train_iterator(config),
                 console_keys=("loss", "l1", "lpips", "psnr"))
  try:
    state = run.restore_or_create(autoencoder_state.abstract_state(config, mesh),
                                  lambda: autoencoder_state.create_state(config, mesh, init_rng))
    train_step_fn = make_train_step(config, mesh)
    preview_fn = jax.jit(functools.partial(reconstruct, config,
                                           autoencoder_state.build_models(config)[0]),
                         out_shardings=sharding.replicated(mesh))

    def write_reconstructions(step, state, batch, **_):
      with run.report.timed("reconstructions"):
        videos = np.asarray(jax.device_get(preview_fn(
            state["params"], sharding.global_batch(batch, config, mesh))))[:8]
        if videos.shape[1] == 1:  # frames: images, inputs on the left
          run.writer.write_images(step, {"reconstructions": videos[:, 0]})
        else:  # clips: an animated GIF
          summaries.write_video(run.writer, step, "reconstructions", videos[:4])

    state, _ = run.train(
        state, lambda s, b: train_step_fn(s, sharding.global_batch(b, config, mesh), step_rng),
        [run.every(config.sample_every_steps, write_reconstructions)])
    run.export(state, state["params"], "the autoencoder's parameters")
  finally:
    run.close()
  return run.scalars
