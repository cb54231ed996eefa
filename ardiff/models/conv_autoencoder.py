"""A convolutional frame autoencoder (`autoencoder.kind="conv"`): the stage 1 of small demos.

The paper's stage 1 is the reference's 1D tokenizer (autoencoder.py), a ViT that learns slowly
from scratch: on the demo's 32x32 white digits it reconstructs blobs after a quarter of an hour
on 2 CPU cores (docs/demo.md). This one is convolutional all through (an LDM-style encoder, and
autoencoder.py's convolutional pixel decoder), and reconstructs the digits legibly after 1000
steps (28.4 dB, 9 minutes there):

  encoder   pixels -> conv_in -> per level: residual blocks, then a stride-2 conv (all but the
            last level) -> mid blocks -> GroupNorm, SiLU, conv -> per grid cell the mean (tanh:
            in [-1, 1], the pixel range the diffusion schedule is made for) and log-variance of
            token_channels channels
  latent    a grid of g x g cells, g = image_size / 2**(levels - 1), read row by row as
            num_latent_tokens = g * g tokens of token_channels channels
  decoder   the grid -> the pixel decoder (autoencoder.py's PixelDecoder, the same levels
            upwards) -> pixels

Methods and ranges as FrameAutoencoder's (pixels in [0, 1], latents [B, F, N, C]), so training,
latent extraction and decoding do not tell the two apart. No temporal decoder.
"""

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from ardiff.models import pixel_decoder as pixel_decoder_lib
from ardiff.models.layers import named


def latent_grid(image_size: int, levels: int) -> int:
  """The side of the latent grid: each level but the last halves the frame."""
  return image_size // 2 ** (levels - 1)


class ConvEncoder(nn.Module):
  """pixels [B, H, W, 3] in [-1, 1] -> (mean in [-1, 1], log-variance) [B, g, g, channels]."""

  channels: int
  hidden_channels: int
  channel_mult: Sequence[int]
  num_res_blocks: int
  groups: int
  logvar_init: float
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    mult, h = tuple(self.channel_mult), self.hidden_channels
    x = pixel_decoder_lib.conv(h * mult[0], 3, "conv_in", **kw)(x)
    for level, m in enumerate(mult):
      for j in range(self.num_res_blocks):
        x = pixel_decoder_lib.ResnetBlock(h * m, self.groups, **kw, name=f"down_{level}_{j}")(x)
      if level < len(mult) - 1:
        x = nn.Conv(h * m, (3, 3), strides=2, padding="SAME", name=f"downsample_{level}",
                    kernel_init=named(nn.initializers.lecun_normal(),
                                      pixel_decoder_lib.CONV_AXES),
                    bias_init=named(nn.initializers.zeros_init(), ("conv_out",)), **kw)(x)
    for j in range(self.num_res_blocks):
      x = pixel_decoder_lib.ResnetBlock(h * mult[-1], self.groups, **kw, name=f"mid_{j}")(x)
    x = nn.silu(pixel_decoder_lib.group_norm(self.groups, "norm_out")(x))
    # The log-variance starts at logvar_init (its bias), as the reference's posterior does.
    bias = jnp.concatenate([jnp.zeros(self.channels), jnp.full(self.channels, self.logvar_init)])
    moments = nn.Conv(
        2 * self.channels, (3, 3), padding="SAME", name="conv_out",
        kernel_init=named(nn.initializers.lecun_normal(), pixel_decoder_lib.CONV_AXES),
        bias_init=named(lambda *_: bias, ("conv_out",)), dtype=jnp.float32,
        param_dtype=self.param_dtype)(x)
    mean, logvar = jnp.split(moments.astype(jnp.float32), 2, axis=-1)
    return jnp.tanh(mean), logvar


class ConvFrameAutoencoder(pixel_decoder_lib.PixelDecodedAutoencoder):
  """Methods as FrameAutoencoder's:

    encode(pixels [B, F, H, W, 3] in [0, 1]) -> (mean, logvar) [B, F, N, C], N = g * g
    decode(z [B, F, N, C]) -> pixels [B, F, H, W, 3] (unbounded; clip to [0, 1] to show)
    decode_features(z) / decode_output(h): decode in two parts, split before the last layer
      (pixel_decoder.conv_out, where the GAN's adaptive weight is measured)
    __call__(pixels, rng=None) -> (reconstruction, mean, logvar); rng: sample the posterior
  """

  image_size: int
  num_latent_tokens: int = 64  # (an 8x8 grid of 32x32 frames, as configs/demo_vae.py:conv)
  token_channels: int = 4
  logvar_init: float = -10.0
  hidden_channels: int = 32
  channel_mult: Sequence[int] = (1, 2, 2)
  num_res_blocks: int = 1
  norm_groups: int = 8
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @property
  def grid(self) -> int:
    return latent_grid(self.image_size, len(self.channel_mult))

  def setup(self):
    g, levels = self.grid, len(self.channel_mult)
    if g * 2 ** (levels - 1) != self.image_size or g * g != self.num_latent_tokens:
      raise ValueError(
          f"autoencoder.kind='conv' halves {self.image_size}x{self.image_size} frames"
          f" {levels - 1} times (len(channel_mult) - 1) to a {g}x{g} grid: set"
          f" autoencoder.num_latent_tokens = {g * g} (not {self.num_latent_tokens}), and an"
          " image_size divisible by 2**(len(channel_mult) - 1).")
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    self.encoder = ConvEncoder(self.token_channels, self.hidden_channels,
                               tuple(self.channel_mult), self.num_res_blocks, self.norm_groups,
                               self.logvar_init, **kw)
    self.pixel_decoder = pixel_decoder_lib.PixelDecoder(
        self.hidden_channels, tuple(self.channel_mult), self.num_res_blocks, 3,
        self.norm_groups, **kw)

  def encode(self, pixels):
    b, f = pixels.shape[:2]
    x = pixels.reshape((b * f,) + pixels.shape[2:]) * 2.0 - 1.0
    mean, logvar = self.encoder(x)
    tokens = lambda a: a.reshape(b, f, self.num_latent_tokens, self.token_channels)
    return tokens(mean), tokens(logvar)

  def decode_features(self, z):
    b, f = z.shape[:2]
    grid = z.reshape((b * f, self.grid, self.grid, self.token_channels))
    h = self.pixel_decoder.features(grid)
    return h.reshape((b, f) + h.shape[1:])
