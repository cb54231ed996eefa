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
  latent    a grid of g x g cells, g = image_size / 2**(levels - 1), read as tokens row by
            row: with latent_patch_size p, each token is a p x p patch of cells (row-major,
            channels last), so num_latent_tokens = (g / p)**2 tokens of token_channels
            = p * p * (the cell's channels) channels. p = 2 gives stage 2 4x fewer tokens per
            frame (its cost) for the same reconstructions.
  decoder   the grid -> the pixel decoder (autoencoder.py's PixelDecoder, the same levels
            upwards) -> pixels

Methods and ranges as FrameAutoencoder's (pixels in [0, 1], latents [B, F, N, C]), so training,
latent extraction and decoding do not tell the two apart. No temporal decoder.
"""

from typing import Sequence

import einops
import flax.linen as nn
import jax.numpy as jnp

from ardiff.models import layers
from ardiff.models import pixel_decoder as pixel_decoder_lib


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
    x = layers.conv(h * mult[0], 3, "conv_in", **kw)(x)
    for level, m in enumerate(mult):
      for j in range(self.num_res_blocks):
        x = pixel_decoder_lib.ResnetBlock(h * m, self.groups, **kw, name=f"down_{level}_{j}")(x)
      if level < len(mult) - 1:
        x = layers.conv(h * m, 3, f"downsample_{level}", strides=2, **kw)(x)
    for j in range(self.num_res_blocks):
      x = pixel_decoder_lib.ResnetBlock(h * mult[-1], self.groups, **kw, name=f"mid_{j}")(x)
    x = nn.silu(pixel_decoder_lib.group_norm(self.groups, "norm_out")(x))
    # The log-variance starts at logvar_init (its bias), as the reference's posterior does.
    bias = jnp.concatenate([jnp.zeros(self.channels), jnp.full(self.channels, self.logvar_init)])
    moments = layers.conv(2 * self.channels, 3, "conv_out", bias_init=lambda *_: bias,
                          dtype=jnp.float32, param_dtype=self.param_dtype)(x)
    mean, logvar = jnp.split(moments.astype(jnp.float32), 2, axis=-1)
    return jnp.tanh(mean), logvar


class ConvFrameAutoencoder(pixel_decoder_lib.PixelDecodedAutoencoder):
  """Methods as FrameAutoencoder's:

    encode(pixels [B, F, H, W, 3] in [0, 1]) -> (mean, logvar) [B, F, N, C], N = (g / p)**2
    decode(z [B, F, N, C]) -> pixels [B, F, H, W, 3] (unbounded; clip to [0, 1] to show)
    decode_features(z) / decode_output(h): decode in two parts, split before the last layer
      (pixel_decoder.conv_out, where the GAN's adaptive weight is measured)
    __call__(pixels, rng=None) -> (reconstruction, mean, logvar); rng: sample the posterior
  """

  image_size: int
  num_latent_tokens: int = 64  # an 8x8 grid of 32x32 frames, cell by cell (demo_vae.py:conv: 2x2)
  token_channels: int = 4
  latent_patch_size: int = 1  # grid cells per token along each side
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

  @property
  def cell_channels(self) -> int:
    return self.token_channels // self.latent_patch_size**2

  def setup(self):
    g, levels, p = self.grid, len(self.channel_mult), self.latent_patch_size
    if g * 2 ** (levels - 1) != self.image_size or g % p:
      raise ValueError(
          f"autoencoder.kind='conv' halves {self.image_size}x{self.image_size} frames"
          f" {levels - 1} times (len(channel_mult) - 1) to a {g}x{g} grid: set an image_size"
          f" divisible by 2**(len(channel_mult) - 1) and a latent_patch_size ({p}) that divides"
          f" {g}.")
    if (g // p) ** 2 != self.num_latent_tokens or self.token_channels % (p * p):
      raise ValueError(
          f"autoencoder.kind='conv' reads its {g}x{g} grid in {p}x{p} patches"
          f" (latent_patch_size): set autoencoder.num_latent_tokens = {(g // p) ** 2} (not"
          f" {self.num_latent_tokens}) and a token_channels divisible by {p * p} (not"
          f" {self.token_channels}).")
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    self.encoder = ConvEncoder(self.cell_channels, self.hidden_channels,
                               tuple(self.channel_mult), self.num_res_blocks, self.norm_groups,
                               self.logvar_init, **kw)
    self.pixel_decoder = pixel_decoder_lib.PixelDecoder(
        self.hidden_channels, tuple(self.channel_mult), self.num_res_blocks, 3,
        self.norm_groups, **kw)

  def encode(self, pixels):
    b, f = pixels.shape[:2]
    x = pixels.reshape((b * f,) + pixels.shape[2:]) * 2.0 - 1.0
    mean, logvar = self.encoder(x)
    return self._tokens(mean, b, f), self._tokens(logvar, b, f)

  def _tokens(self, grid, b, f):
    """[B * F, g, g, c] -> [B, F, N, p * p * c]: p x p patches of cells, row by row."""
    p = self.latent_patch_size
    return einops.rearrange(grid, "(b f) (h p) (w q) c -> b f (h w) (p q c)", b=b, f=f, p=p,
                            q=p)

  def _grid(self, z):
    """The inverse of _tokens: [B, F, N, C] -> [B * F, g, g, c]."""
    p, n = self.latent_patch_size, self.grid // self.latent_patch_size
    return einops.rearrange(z, "b f (h w) (p q c) -> (b f) (h p) (w q) c", h=n, w=n, p=p, q=p)

  def decode_features(self, z):
    b, f = z.shape[:2]
    h = self.pixel_decoder.features(self._grid(z))
    return h.reshape((b, f) + h.shape[1:])
