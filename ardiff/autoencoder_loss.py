"""The frame autoencoder's loss: L1 + LPIPS + KL, and the PatchGAN hinge loss with the adaptive
weight (as in the reference's LPIPSWithDiscriminator, taming's recipe).

Frames are in [0, 1] (the autoencoder's range); LPIPS and the discriminator see them mapped to
[-1, 1], the range both were built for (the reference feeds LPIPS [0, 1] as is).

Scale: the reference sums the L1 over pixels and adds the per-image LPIPS to every pixel before
summing, i.e. its loss is H * W * 3 times (mean L1 + LPIPS). Here the loss is that mean form:
the same minimiser, and the same updates under Adam (invariant to a constant factor), with
numbers that read the same at any resolution.
"""

import jax
import jax.numpy as jnp


def to_signed(x):
  """[0, 1] -> [-1, 1]."""
  return 2.0 * x - 1.0


def l1(x, rec):
  """Mean absolute error per frame: [..., H, W, 3] -> [...]."""
  return jnp.mean(jnp.abs(x - rec), axis=(-3, -2, -1))


def lpips(lpips_model, lpips_params, x, rec):
  """LPIPS per frame of [..., H, W, 3] frames in [0, 1] -> [...]."""
  shape = x.shape[:-3]
  flat = lambda v: to_signed(v.reshape((-1,) + v.shape[-3:]))
  d = lpips_model.apply({"params": lpips_params}, flat(x), flat(rec))
  return d.reshape(shape)


def kl(mean, logvar):
  """KL(N(mean, exp(logvar)) || N(0, 1)) per frame, summed over tokens and channels:
  [..., N, C] -> [...]."""
  return 0.5 * jnp.sum(jnp.square(mean) + jnp.exp(logvar) - 1.0 - logvar, axis=(-2, -1))


def psnr(x, rec):
  """PSNR in dB per frame of frames in [0, 1] (reconstructions clipped to [0, 1])."""
  mse = jnp.mean(jnp.square(x - jnp.clip(rec, 0.0, 1.0)), axis=(-3, -2, -1))
  return -10.0 * jnp.log10(jnp.maximum(mse, 1e-10))


def hinge_discriminator_loss(logits_real, logits_fake):
  """The discriminator's hinge loss: mean relu(1 - real) and relu(1 + fake), halved."""
  return 0.5 * (jnp.mean(jax.nn.relu(1.0 - logits_real)) + jnp.mean(jax.nn.relu(1.0 + logits_fake)))


def generator_gan_loss(logits_fake):
  return -jnp.mean(logits_fake)


def adaptive_weight(rec_grad, gan_grad, max_weight: float = 1e4):
  """||grad rec|| / (||grad gan|| + 1e-4) at the last layer, clipped to [0, max_weight], held
  constant (no gradient): balances the GAN term against the reconstruction term."""
  norm = lambda g: jnp.sqrt(sum(jnp.sum(jnp.square(a)) for a in jax.tree.leaves(g)))
  w = norm(rec_grad) / (norm(gan_grad) + 1e-4)
  return jax.lax.stop_gradient(jnp.clip(w, 0.0, max_weight))
