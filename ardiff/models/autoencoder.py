"""The frame autoencoder of stage 1: the reference's 1D tokenizer with a Gaussian posterior
(TiTok-KL), and its temporal-causal decoder.

A frame (pixels in [0, 1], as in the reference) becomes num_latent_tokens tokens of
token_channels channels (the paper: 32 x 4 per 256x256 frame):

  encoder   16x16 patches + a class token + learned latent tokens -> ViT -> per latent token the
            mean and log-variance of its channels (posterior; the mean is the latent)
  decoder   latents (L2-normalised per token when use_l2_norm) -> linear -> with a class token
            and one mask token per patch -> ViT -> patch tokens -> 1x1 convs -> softmax over
            pixel_vocab channels -> 1x1 conv -> the convolutional pixel decoder -> pixels

Parameter names and shapes follow the reference's modules (encoder.*, decoder.*,
latent_tokens, pixel_quantize_conv, pixel_decoder.*) so that its weights convert one to one;
the transformer layers are scanned (a leading [depth] axis, logical name "layers").

The temporal decoder (temporal=True) adds before each decoder block two residual layers: at
each patch position, causal self-attention over the frames (fine); and cross-attention from a
frame's latent and patch tokens to the latent tokens of its own and earlier frames (coarse).
Their output projections start at zero, so at initialisation it equals the per-frame decoder.
In each temporal layer a frame sees at most temporal_window frames (itself included; 0: all
earlier ones), the span it trained on, so videos longer than the trained clips decode with the
attention spans of training (stacked, the layers reach depth * (window - 1) frames back).
"""

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ardiff.models import conv_autoencoder
from ardiff.models import layers
from ardiff.models import pixel_decoder as pixel_decoder_lib
from ardiff.models.layers import named

LOGVAR_RANGE = (-30.0, 20.0)  # the reference clamps the posterior's log-variance to this
_normal = nn.initializers.truncated_normal(0.02)
# Where the frame's information enters and leaves the latents (patch embedding, latent
# projections): fan-in scaling, not 0.02. At 0.02 the input's variation starts buried under the
# positional embeddings, and from scratch the decoder learns the mean image and ignores the
# latents (the reference's 0.02 init is followed by TiTok's pretrained weights).
_fan_in = nn.initializers.lecun_normal()
_zeros = nn.initializers.zeros_init()


def layer_norm(name: str | None = None) -> nn.LayerNorm:
  """torch's LayerNorm (eps 1e-5, scale and bias), in float32."""
  return nn.LayerNorm(
      epsilon=1e-5, dtype=jnp.float32, name=name,
      scale_init=named(nn.initializers.ones_init(), ("embed",)),
      bias_init=named(_zeros, ("embed",)),
  )


def to_uint8(frames: jax.Array) -> jax.Array:
  """The autoencoder's frames (pixels in [0, 1], reconstructions overshoot) -> uint8."""
  return jnp.round(jnp.clip(frames, 0.0, 1.0) * 255.0).astype(jnp.uint8)


def l2_normalize(z: jax.Array, axis: int = -1) -> jax.Array:
  """z / max(|z|, 1e-12) (torch.nn.functional.normalize)."""
  norm = jnp.sqrt(jnp.sum(jnp.square(z), axis=axis, keepdims=True))
  return z / jnp.maximum(norm, 1e-12)


class MultiheadAttention(nn.Module):
  """Attention with torch.nn.MultiheadAttention's parameters: one in-projection for queries,
  keys and values (in_proj [W, 3, H, Dh] + bias) and an out-projection (out_proj [H, Dh, W]).

  zero_out: the out-projection starts at zero (the temporal layers' identity at init).
  """

  num_heads: int
  zero_out: bool = False
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, queries, keys, values=None, mask=None):
    """queries [B, Sq, W], keys and values [B, Sk, W] (values None: the keys' inputs), mask bool
    [Sq, Sk] (True: may attend). As torch's MHA(q, k, v): the in-projection's three parts read
    queries, keys and values."""
    values = keys if values is None else values
    w, h = queries.shape[-1], self.num_heads
    dh = w // h
    in_kernel = self.param(
        "in_proj_kernel",
        named(nn.initializers.xavier_uniform(in_axis=0, out_axis=(1, 2, 3)),
              ("embed", None, "heads", "kv")),
        (w, 3, h, dh), self.param_dtype)
    in_bias = self.param("in_proj_bias", named(_zeros, (None, "heads", "kv")), (3, h, dh),
                         self.param_dtype)
    in_kernel, in_bias = in_kernel.astype(self.dtype), in_bias.astype(self.dtype)
    project = lambda x, i: jnp.einsum("bsd,dhk->bshk", x.astype(self.dtype), in_kernel[:, i]) + in_bias[i]
    q, k, v = project(queries, 0), project(keys, 1), project(values, 2)
    q = nn.with_logical_constraint(q, ("batch", "tokens", "heads", "kv"))
    out = jax.nn.dot_product_attention(q, k, v, mask=None if mask is None else mask[None, None])
    out_kernel = self.param(
        "out_proj_kernel", named(_zeros if self.zero_out else _normal, ("heads", "kv", "embed")),
        (h, dh, w), self.param_dtype)
    out_bias = self.param("out_proj_bias", named(_zeros, ("embed",)), (w,), self.param_dtype)
    return (jnp.einsum("bshk,hkd->bsd", out, out_kernel.astype(self.dtype))
            + out_bias.astype(self.dtype))


class Mlp(nn.Module):
  """c_fc, exact GELU, c_proj (the reference's open_clip MLP)."""

  hidden: int
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    w = x.shape[-1]
    h = nn.Dense(self.hidden, kernel_init=named(_normal, ("embed", "mlp")),
                 bias_init=named(_zeros, ("mlp",)), name="c_fc", **kw)(x.astype(self.dtype))
    h = nn.with_logical_constraint(nn.gelu(h, approximate=False), ("batch", "tokens", "mlp"))
    return nn.Dense(w, kernel_init=named(_normal, ("mlp", "embed")),
                    bias_init=named(_zeros, ("embed",)), name="c_proj", **kw)(h)


class VitBlock(nn.Module):
  """Pre-LN transformer block. Mixed precision: the residual stream and the norms in float32,
  attention and MLP in `dtype`."""

  num_heads: int
  mlp_ratio: float = 4.0
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):  # float32 [B, S, W]
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    h = layer_norm("ln_1")(x)
    x = x + MultiheadAttention(self.num_heads, name="attn", **kw)(h, h).astype(jnp.float32)
    h = layer_norm("ln_2")(x)
    x = x + Mlp(int(x.shape[-1] * self.mlp_ratio), name="mlp", **kw)(h).astype(jnp.float32)
    return nn.with_logical_constraint(x, ("batch", "tokens", "act_embed"))


def frame_mask(query_frames: np.ndarray, key_frames: np.ndarray, window: int) -> np.ndarray:
  """bool [Q, K]: a query of frame f sees keys of frames f - window < f' <= f (window 0: all
  f' <= f). Static (numpy): the frame of every query and key is known when tracing."""
  q, k = query_frames[:, None], key_frames[None, :]
  mask = k <= q
  if window:
    mask &= k > q - window
  return mask


class FineTemporal(nn.Module):
  """At each patch position, causal self-attention over the frames (LayerNorm + attention, no
  MLP; the reference's fine_temporal_blocks)."""

  num_frames: int
  window: int
  num_heads: int
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, patches):  # float32 [B * F, P, W] -> same
    bf, p, w = patches.shape
    f = self.num_frames
    seq = patches.reshape(bf // f, f, p, w).transpose(0, 2, 1, 3).reshape(-1, f, w)  # [B*P, F, W]
    h = layer_norm("ln_1")(seq)
    mask = jnp.asarray(frame_mask(np.arange(f), np.arange(f), self.window))
    attn = MultiheadAttention(self.num_heads, True, self.dtype, self.param_dtype, name="attn")
    seq = seq + attn(h, h, mask=mask).astype(jnp.float32)
    return seq.reshape(bf // f, p, f, w).transpose(0, 2, 1, 3).reshape(bf, p, w)


class CoarseTemporal(nn.Module):
  """A frame's latent and patch tokens attend to the latent tokens of its own and earlier
  frames, with separate LayerNorms on queries, keys and values (the reference's
  coarse_temporal_blocks). All frames of a video in one call; the frame mask keeps it causal."""

  num_frames: int
  window: int
  num_heads: int
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, latents, patches):  # float32 [B * F, N, W], [B * F, P, W]
    bf, n, w = latents.shape
    f, p = self.num_frames, patches.shape[1]
    queries = jnp.concatenate([latents, patches], axis=1).reshape(bf // f, f * (n + p), w)
    keys = latents.reshape(bf // f, f * n, w)
    frames = np.arange(f)
    mask = jnp.asarray(frame_mask(np.repeat(frames, n + p), np.repeat(frames, n), self.window))
    attn = MultiheadAttention(self.num_heads, True, self.dtype, self.param_dtype, name="attn")
    q, k, v = layer_norm("ln_q")(queries), layer_norm("ln_k")(keys), layer_norm("ln_v")(keys)
    queries = (queries + attn(q, k, v, mask=mask).astype(jnp.float32)).reshape(bf, n + p, w)
    return queries[:, :n], queries[:, n:]


class EncoderLayer(nn.Module):
  """The scan body of the encoder: one ViT block."""

  num_heads: int
  mlp_ratio: float
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, _):
    return VitBlock(self.num_heads, self.mlp_ratio, self.dtype, self.param_dtype, name="block")(x), None


class DecoderLayer(nn.Module):
  """The scan body of the decoder: (temporal layers,) then one ViT block.

  x [B * F, 1 + P + N, W]: each frame's class token, P patch (mask) tokens and N latent tokens.
  """

  num_heads: int
  mlp_ratio: float
  num_patches: int
  num_frames: int = 1
  temporal: bool = False
  window: int = 0
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, _):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    if self.temporal:
      p = self.num_patches
      cls, patches, latents = x[:, :1], x[:, 1:1 + p], x[:, 1 + p:]
      patches = FineTemporal(self.num_frames, self.window, self.num_heads, **kw,
                             name="fine_temporal")(patches)
      latents, patches = CoarseTemporal(self.num_frames, self.window, self.num_heads, **kw,
                                        name="coarse_temporal")(latents, patches)
      x = jnp.concatenate([cls, patches, latents], axis=1)
    return VitBlock(self.num_heads, self.mlp_ratio, **kw, name="block")(x), None


def scan_layers(body, depth: int, remat: bool):
  """nn.scan of a layer over depth: parameters stacked [depth, ...] (logical axis "layers"),
  traced and compiled once whatever the depth."""
  if remat:
    body = nn.remat(body, prevent_cse=False)
  return nn.scan(body, variable_axes={"params": 0}, split_rngs={"params": True},
                 in_axes=nn.broadcast, length=depth,
                 metadata_params={nn.PARTITION_NAME: "layers"})


class Encoder(nn.Module):
  """Frames [B, H, W, 3] in [0, 1] and the learned latent tokens [N, W] -> the posterior's
  moments [B, N, 2C] (mean, then log-variance, per latent token)."""

  patch_size: int
  width: int
  depth: int
  num_heads: int
  mlp_ratio: float
  token_channels: int
  logvar_init: float = 0.0
  remat: bool = False
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, pixels, latent_tokens):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    b, w, n = pixels.shape[0], self.width, latent_tokens.shape[0]
    scale = nn.initializers.normal(w ** -0.5)
    x = nn.Conv(w, (self.patch_size,) * 2, strides=(self.patch_size,) * 2, padding="VALID",
                kernel_init=named(_fan_in, (None, None, None, "embed")),
                bias_init=named(_zeros, ("embed",)), name="patch_embed", **kw)(pixels)
    x = x.reshape(b, -1, w).astype(jnp.float32)  # [B, P, W], patches in row-major order
    p = x.shape[1]
    cls = self.param("class_embedding", named(scale, (None, "embed")), (1, w), self.param_dtype)
    pos = self.param("positional_embedding", named(scale, (None, "embed")), (p + 1, w),
                     self.param_dtype)
    latent_pos = self.param("latent_token_positional_embedding", named(scale, (None, "embed")),
                            (n, w), self.param_dtype)
    x = jnp.concatenate([jnp.broadcast_to(cls, (b, 1, w)), x], axis=1) + pos
    x = jnp.concatenate([x, jnp.broadcast_to(latent_tokens + latent_pos, (b, n, w))], axis=1)
    x = layer_norm("ln_pre")(x)
    layers = scan_layers(EncoderLayer, self.depth, self.remat)(
        self.num_heads, self.mlp_ratio, **kw, name="transformer")
    x, _ = layers(x, None)
    latents = layer_norm("ln_post")(x[:, 1 + p:])  # [B, N, W]
    # The reference reshapes [B, N, W] to [B, W, N] (not a transpose) before its 1x1 conv: each
    # output token reads a mix of all tokens' features. Kept, so that its weights mean the same.
    mixed = latents.reshape(b, w, n).transpose(0, 2, 1)  # [B, N, W]
    # The log-variance half of the bias starts at logvar_init: a near-deterministic posterior at
    # first. At std 1 (logvar 0) the sampled latents start as noise, the decoder learns to ignore
    # them, and with KL weight 0 nothing recovers (the reference starts from TiTok's weights).
    c = self.token_channels
    bias_init = lambda key, shape, dtype=jnp.float32: jnp.concatenate(
        [jnp.zeros((c,), dtype), jnp.full((c,), self.logvar_init, dtype)])
    return nn.Dense(2 * c, kernel_init=named(_fan_in, ("embed", None)),
                    bias_init=named(bias_init, (None,)), name="conv_out", dtype=jnp.float32,
                    param_dtype=self.param_dtype)(mixed)


class Decoder(nn.Module):
  """Latents [B, F, N, C] -> the pixel decoder's input vocabulary logits [B * F, g, g, V]."""

  grid_size: int
  width: int
  depth: int
  num_heads: int
  mlp_ratio: float
  pixel_vocab: int
  temporal: bool = False
  temporal_window: int = 0
  remat: bool = False
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, z):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    b, f, n, _ = z.shape
    w, g = self.width, self.grid_size
    p = g * g
    scale = nn.initializers.normal(w ** -0.5)
    x = nn.Dense(w, kernel_init=named(_fan_in, (None, "embed")), bias_init=named(_zeros, ("embed",)),
                 name="decoder_embed", dtype=jnp.float32, param_dtype=self.param_dtype)(
                     z.reshape(b * f, n, -1))
    latent_pos = self.param("latent_token_positional_embedding", named(scale, (None, "embed")),
                            (n, w), self.param_dtype)
    cls = self.param("class_embedding", named(scale, (None, "embed")), (1, w), self.param_dtype)
    pos = self.param("positional_embedding", named(scale, (None, "embed")), (p + 1, w),
                     self.param_dtype)
    mask_token = self.param("mask_token", named(scale, (None, None, "embed")), (1, 1, w),
                            self.param_dtype)
    queries = jnp.concatenate([cls[None], jnp.broadcast_to(mask_token, (1, p, w))], axis=1) + pos
    x = jnp.concatenate([jnp.broadcast_to(queries, (b * f, p + 1, w)), x + latent_pos], axis=1)
    x = layer_norm("ln_pre")(x)
    layers = scan_layers(DecoderLayer, self.depth, self.remat)(
        self.num_heads, self.mlp_ratio, p, f, self.temporal, self.temporal_window, **kw,
        name="transformer")
    x, _ = layers(x, None)
    x = layer_norm("ln_post")(x[:, 1:1 + p]).reshape(b * f, g, g, w)
    x = nn.Dense(2 * w, kernel_init=named(_normal, ("embed", "mlp")), bias_init=named(_zeros, ("mlp",)),
                 name="ffn_in", **kw)(x)
    x = nn.Dense(self.pixel_vocab, kernel_init=named(_normal, ("mlp", "vocab")),
                 bias_init=named(_zeros, ("vocab",)), name="ffn_out", **kw)(jnp.tanh(x))
    return x.astype(jnp.float32)


class FrameAutoencoder(pixel_decoder_lib.PixelDecodedAutoencoder):
  """The stage-1 model (module docstring). Methods, applied as model.apply(v, ..., method=...):

    encode(pixels [B, F, H, W, 3] in [0, 1]) -> (mean, logvar) [B, F, N, C]
    decode(z [B, F, N, C]) -> pixels [B, F, H, W, 3] (unbounded; clip to [0, 1] to show)
    decode_features(z) / decode_output(h): decode in two parts, split before the last layer
    __call__(pixels, rng=None) -> (reconstruction, mean, logvar); rng: sample the posterior
  """

  image_size: int
  patch_size: int = 16
  width: int = 1024
  encoder_depth: int = 24
  decoder_depth: int = 24
  num_heads: int = 16
  mlp_ratio: float = 4.0
  num_latent_tokens: int = 32
  token_channels: int = 4
  use_l2_norm: bool = True
  logvar_init: float = -10.0
  pixel_vocab: int = 1024
  z_channels: int = 256
  pixel_hidden_channels: int = 128
  channel_mult: Sequence[int] = (1, 1, 2, 2, 4)
  num_res_blocks: int = 2
  norm_groups: int = 32
  temporal: bool = False
  temporal_window: int = 0
  remat: bool = False
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  def setup(self):
    g, levels = self.image_size // self.patch_size, len(self.channel_mult)
    if self.image_size % self.patch_size or g * 2 ** (levels - 1) != self.image_size:
      raise ValueError(
          f"The pixel decoder upsamples the {g}x{g} patch grid by 2**(len(channel_mult) - 1) ="
          f" {2 ** (levels - 1)}: image_size {self.image_size} needs patch_size"
          f" {self.patch_size} = 2**(len(channel_mult) - 1) (config.autoencoder)."
      )
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    self.encoder = Encoder(self.patch_size, self.width, self.encoder_depth, self.num_heads,
                           self.mlp_ratio, self.token_channels, self.logvar_init, self.remat, **kw)
    self.decoder = Decoder(g, self.width, self.decoder_depth, self.num_heads, self.mlp_ratio,
                           self.pixel_vocab, self.temporal, self.temporal_window, self.remat, **kw)
    self.latent_tokens = self.param(
        "latent_tokens", named(nn.initializers.normal(self.width ** -0.5), (None, "embed")),
        (self.num_latent_tokens, self.width), self.param_dtype)
    self.pixel_quantize_conv = layers.conv(self.z_channels, 1, **kw)
    self.pixel_decoder = pixel_decoder_lib.PixelDecoder(
        self.pixel_hidden_channels, tuple(self.channel_mult), self.num_res_blocks, 3,
        self.norm_groups, **kw)

  def encode(self, pixels):
    """pixels [B, F, H, W, 3] in [0, 1] -> posterior mean and log-variance [B, F, N, C]."""
    b, f = pixels.shape[:2]
    moments = self.encoder(pixels.reshape((b * f,) + pixels.shape[2:]), self.latent_tokens)
    mean, logvar = jnp.split(moments.reshape(b, f, self.num_latent_tokens, -1), 2, axis=-1)
    return mean, jnp.clip(logvar, *LOGVAR_RANGE)

  def decode_features(self, z):
    """z [B, F, N, C] -> the input of the pixel decoder's last layer [B, F, H, W, c]."""
    b, f = z.shape[:2]
    if self.use_l2_norm:
      z = l2_normalize(z)
    logits = self.decoder(z)  # [B * F, g, g, V]
    h = self.pixel_decoder.features(self.pixel_quantize_conv(jax.nn.softmax(logits, axis=-1)))
    return h.reshape((b, f) + h.shape[1:])


KINDS = ("titok", "conv")


def build_autoencoder(ae) -> FrameAutoencoder | conv_autoencoder.ConvFrameAutoencoder:
  """The model of a config's autoencoder section (config.autoencoder); its `kind` picks the
  paper's 1D tokenizer ("titok") or the convolutional one of small demos ("conv")."""
  kind = ae.get("kind", "titok")
  if kind not in KINDS:
    raise ValueError(f"config.autoencoder.kind={kind!r}: one of {KINDS}.")
  if kind != "conv" and ae.get("latent_patch_size", 1) != 1:
    raise ValueError("autoencoder.latent_patch_size is the conv kind's: set it to 1 for"
                     f" kind={kind!r} (its tokens are not cells of a grid).")
  if kind == "conv":
    if ae.temporal or ae.use_l2_norm:
      raise ValueError(
          "autoencoder.kind='conv' has no temporal decoder and bounds its latents with tanh:"
          " set autoencoder.temporal=False and autoencoder.use_l2_norm=False.")
    return conv_autoencoder.ConvFrameAutoencoder(
        image_size=ae.image_size, num_latent_tokens=ae.num_latent_tokens,
        token_channels=ae.token_channels, latent_patch_size=ae.get("latent_patch_size", 1),
        logvar_init=ae.logvar_init, hidden_channels=ae.pixel_hidden_channels,
        channel_mult=tuple(ae.channel_mult),
        num_res_blocks=ae.num_res_blocks, norm_groups=ae.norm_groups,
        dtype=jnp.dtype(ae.dtype), param_dtype=jnp.dtype(ae.param_dtype))
  return FrameAutoencoder(
      image_size=ae.image_size, patch_size=ae.patch_size, width=ae.width,
      encoder_depth=ae.encoder_depth, decoder_depth=ae.decoder_depth, num_heads=ae.num_heads,
      mlp_ratio=ae.mlp_ratio, num_latent_tokens=ae.num_latent_tokens,
      token_channels=ae.token_channels, use_l2_norm=ae.use_l2_norm, logvar_init=ae.logvar_init,
      pixel_vocab=ae.pixel_vocab,
      z_channels=ae.z_channels, pixel_hidden_channels=ae.pixel_hidden_channels,
      channel_mult=tuple(ae.channel_mult), num_res_blocks=ae.num_res_blocks,
      norm_groups=ae.norm_groups, temporal=ae.temporal, temporal_window=ae.temporal_window,
      remat=ae.remat, dtype=jnp.dtype(ae.dtype), param_dtype=jnp.dtype(ae.param_dtype),
  )
