"""The convolutional pixel decoder of the frame autoencoder (MaskGIT-VQGAN's decoder, as the
reference's TiTok-KL uses it): a feature map of grid x grid -> frames of grid * 2**(levels - 1).

Layer for layer as the reference builds it, so that its weights convert one to one: conv_in,
`mid` residual blocks, `up` levels from the coarsest (upsampling by nearest x2 + conv, except at
level 0) to the finest, GroupNorm + SiLU + conv_out. Convolutions are NHWC here.
"""

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from ardiff.models.layers import conv, named


def group_norm(groups: int, name: str | None = None) -> nn.GroupNorm:
  return nn.GroupNorm(
      num_groups=groups, epsilon=1e-6, name=name, dtype=jnp.float32,
      scale_init=named(nn.initializers.ones_init(), ("conv_out",)),
      bias_init=named(nn.initializers.zeros_init(), ("conv_out",)),
  )


class ResnetBlock(nn.Module):
  """GroupNorm, SiLU, 3x3 conv, twice, plus the input.

  Where the channel count changes, the reference's 1x1 shortcut is applied to the block's
  output, not to its input (a quirk kept for weight compatibility): out = h + shortcut(h).
  """

  features: int
  groups: int = 32
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):  # [B, H, W, C_in] -> [B, H, W, features]
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    h = nn.silu(group_norm(self.groups, "norm1")(x))
    h = conv(self.features, 3, "conv1", use_bias=False, **kw)(h)
    h = nn.silu(group_norm(self.groups, "norm2")(h))
    h = conv(self.features, 3, "conv2", use_bias=False, **kw)(h)
    residual = x
    if x.shape[-1] != self.features:
      residual = conv(self.features, 1, "nin_shortcut", use_bias=False, **kw)(h)
    return h + residual


class UpLevel(nn.Module):
  """Residual blocks at one resolution, then (upsample) nearest x2 and a 3x3 conv."""

  features: int
  num_res_blocks: int
  upsample: bool
  groups: int = 32
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, h):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    for j in range(self.num_res_blocks):
      h = ResnetBlock(self.features, self.groups, **kw, name=f"block_{j}")(h)
    if self.upsample:
      h = jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)  # nearest x2
      h = conv(self.features, 3, "upsample_conv", **kw)(h)
    return h


class PixelDecoder(nn.Module):
  """z [B, g, g, z_channels] -> pixels [B, g * 2**(L - 1), same, out_channels] (L = levels).

  Call `features` then `output` to reach the input of the last layer (conv_out), where the GAN's
  adaptive weight is measured; `__call__` runs both.
  """

  hidden_channels: int = 128
  channel_mult: Sequence[int] = (1, 1, 2, 2, 4)
  num_res_blocks: int = 2
  out_channels: int = 3
  groups: int = 32
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  def setup(self):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    mult, h = tuple(self.channel_mult), self.hidden_channels
    self.conv_in = conv(h * mult[-1], 3, **kw)
    self.mid = [ResnetBlock(h * mult[-1], self.groups, **kw) for _ in range(self.num_res_blocks)]
    # up[level]: level 0 is the finest and does not upsample; they run from the coarsest.
    self.up = [UpLevel(h * mult[level], self.num_res_blocks, level > 0, self.groups, **kw)
               for level in range(len(mult))]
    self.norm_out = group_norm(self.groups)
    self.conv_out = conv(self.out_channels, 3, **kw)

  def features(self, z):
    """The activations that enter conv_out: [B, H, W, hidden_channels * channel_mult[0]]."""
    h = self.conv_in(z)
    for block in self.mid:
      h = block(h)
    for level in reversed(self.up):
      h = level(h)
    return nn.silu(self.norm_out(h))

  def output(self, h):
    return self.conv_out(h).astype(jnp.float32)

  def __call__(self, z):
    return self.output(self.features(z))


class PixelDecodedAutoencoder(nn.Module):
  """What the frame autoencoders that end in this pixel decoder share (autoencoder.py's
  FrameAutoencoder, conv_autoencoder.py's ConvFrameAutoencoder): given their encode(pixels) ->
  (mean, logvar) and decode_features(z) (everything up to the pixel decoder's conv_out, in
  self.pixel_decoder), the decoder's last layer, the whole decoder, and the forward pass."""

  def decode_output(self, h):
    return self.pixel_decoder.output(h)

  def decode(self, z):
    return self.decode_output(self.decode_features(z))

  def __call__(self, pixels, rng=None):
    mean, logvar = self.encode(pixels)
    z = mean
    if rng is not None:
      z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(rng, mean.shape)
    return self.decode(z), mean, logvar
