"""The PatchGAN discriminator of the autoencoder's GAN loss (pix2pix / taming's
NLayerDiscriminator, as the reference uses it): a logit per overlapping patch of a frame."""

import flax.linen as nn
import jax.numpy as jnp

from ardiff.models.layers import CONV_AXES, named


class BatchNorm(nn.Module):
  """BatchNorm over (B, H, W) with the batch's own statistics: the discriminator only ever runs
  in training mode, so no running averages are kept (and none need checkpointing)."""

  epsilon: float = 1e-5

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    scale = self.param("scale", named(lambda k, s: 1.0 + 0.02 * nn.initializers.normal(1.0)(k, s),
                                      ("conv_out",)), (c,))
    bias = self.param("bias", named(nn.initializers.zeros_init(), ("conv_out",)), (c,))
    mean = jnp.mean(x, axis=(0, 1, 2))
    var = jnp.var(x, axis=(0, 1, 2))
    return (x - mean) * (scale / jnp.sqrt(var + self.epsilon)) + bias


class PatchDiscriminator(nn.Module):
  """Frames [B, H, W, 3] in [-1, 1] -> logits [B, h, w, 1]: a 4x4 stride-2 conv, num_layers - 1
  more with BatchNorm (channels doubling up to 8 x base), a stride-1 one, and a 1-channel conv."""

  base_channels: int = 64
  num_layers: int = 3

  @nn.compact
  def __call__(self, x):
    init = named(nn.initializers.normal(0.02), CONV_AXES)

    def conv(features, stride, use_bias, name):
      return nn.Conv(features, (4, 4), strides=(stride, stride), padding=((1, 1), (1, 1)),
                     use_bias=use_bias, kernel_init=init, name=name,
                     bias_init=named(nn.initializers.zeros_init(), ("conv_out",)))

    x = nn.leaky_relu(conv(self.base_channels, 2, True, "conv_0")(x), 0.2)
    for n in range(1, self.num_layers + 1):
      stride = 2 if n < self.num_layers else 1
      x = conv(self.base_channels * min(2 ** n, 8), stride, False, f"conv_{n}")(x)
      x = nn.leaky_relu(BatchNorm(name=f"norm_{n}")(x), 0.2)
    return conv(1, 1, True, f"conv_{self.num_layers + 1}")(x)
