"""The denoiser: a DiT over the tokens of all frames with temporal causal attention.

Sequence layout: [conditioning tokens (Nc) | frame 0 (L tokens) | frame 1 | ... | frame F-1].
Each frame has its own timestep, embedded and applied to its own tokens through adaLN-Zero; the
conditioning tokens have a learned conditioning vector of their own. Positions: a learned
embedding of the token index within a frame, and RoPE over the frame index (relative, so a
window may sit anywhere in a long video).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ardiff.models import layers
from ardiff.models.layers import named

# RoPE position of the conditioning tokens: just before the first frame of the window.
CONTEXT_POSITION = -1


def attention_mask(
    num_context: int, num_frames: int, tokens_per_frame: int, context_attends_video: bool = False
) -> np.ndarray:
  """bool [S, S] (query, key), S = num_context + num_frames * tokens_per_frame.

  A video token attends to the conditioning tokens and to every token of its own and earlier
  frames. Conditioning tokens attend to conditioning tokens only, so nothing about frame f
  reaches frames before f. context_attends_video=True is the reference's leaky variant, in
  which they attend to every frame (and the future leaks back after two layers).
  """
  frame = np.concatenate(
      [np.full(num_context, -1), np.repeat(np.arange(num_frames), tokens_per_frame)]
  )
  q, k = frame[:, None], frame[None, :]
  mask = (k <= q) | (k == -1)  # video queries: earlier-or-same frames and the context
  ctx_q = q == -1
  mask = np.where(ctx_q, True if context_attends_video else (k == -1), mask)
  return np.asarray(mask, bool)


def token_positions(num_context: int, num_frames: int, tokens_per_frame: int) -> np.ndarray:
  return np.concatenate(
      [np.full(num_context, CONTEXT_POSITION), np.repeat(np.arange(num_frames), tokens_per_frame)]
  ).astype(np.int32)


def per_token(v: jax.Array, num_context: int, tokens_per_frame: int) -> jax.Array:
  """[B, 1 + F, D] (context row, then one row per frame) -> [B, Nc + F * L, D]."""
  b, rows, d = v.shape
  ctx = jnp.broadcast_to(v[:, :1], (b, num_context, d))
  vid = jnp.broadcast_to(v[:, 1:, None], (b, rows - 1, tokens_per_frame, d))
  return jnp.concatenate([ctx, vid.reshape(b, -1, d)], axis=1)


class Block(nn.Module):
  """Transformer block with adaLN-Zero: shift, scale and gate for attention and for the MLP."""

  num_heads: int
  mlp_ratio: float
  num_context: int
  tokens_per_frame: int
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, c, cos, sin, mask):
    """x [B, S, D]; c [B, 1 + F, D] conditioning vectors (context, then frames)."""
    d = x.shape[-1]
    mod = nn.Dense(
        6 * d, dtype=self.dtype, param_dtype=self.param_dtype,
        kernel_init=named(nn.initializers.zeros_init(), ("embed", "mlp")),
        bias_init=named(nn.initializers.zeros_init(), ("mlp",)), name="adaLN",
    )(nn.silu(c))
    mod = per_token(mod, self.num_context, self.tokens_per_frame)  # [B, S, 6D]
    shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = jnp.split(mod, 6, axis=-1)

    h = layers.modulate(layers.layer_norm(x), shift_a, scale_a)
    h = layers.Attention(self.num_heads, self.dtype, self.param_dtype, name="attn")(h, cos, sin, mask)
    x = x + gate_a * h
    h = layers.modulate(layers.layer_norm(x), shift_m, scale_m)
    h = layers.Mlp(int(d * self.mlp_ratio), self.dtype, self.param_dtype, name="mlp")(h)
    x = x + gate_m * h
    return nn.with_logical_constraint(x, ("batch", "tokens", "act_embed"))


class VideoDiT(nn.Module):
  """x [B, F, L, C], t int32 [B, F], labels int32 [B] or None -> prediction [B, F, L, C]."""

  num_frames: int  # the window: the most frames one call sees (the trained clip length)
  tokens_per_frame: int
  in_channels: int
  hidden_size: int
  depth: int
  num_heads: int
  mlp_ratio: float = 4.0
  num_classes: int = 0  # 0: unconditional; else labels 0..num_classes-1 and a null label
  num_context_tokens: int = 1
  context_attends_video: bool = False
  rope_theta: float = 10_000.0
  remat: bool = False
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @property
  def null_label(self) -> int:
    return self.num_classes

  @nn.compact
  def __call__(self, x, t, labels=None):
    b, f, l, c = x.shape
    if f > self.num_frames:
      raise ValueError(
          f"The model sees windows of at most {self.num_frames} frames (config.model.num_frames)"
          f" but got {f}; longer videos are generated through sliding windows (ad_schedule)."
      )
    if l != self.tokens_per_frame or c != self.in_channels:
      raise ValueError(
          f"Input has {l} tokens x {c} channels per frame; the model is built for"
          f" {self.tokens_per_frame} x {self.in_channels} (config.model.tokens_per_frame /"
          " in_channels, set from data.resolution and data.patch_size for pixel configs)."
      )
    d, nc = self.hidden_size, self.num_context_tokens
    if d % self.num_heads or (d // self.num_heads) % 2:
      raise ValueError(f"hidden_size {d} must split into {self.num_heads} heads of even size.")
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)

    # Tokens of the frames: linear patch/latent embedding plus the token-in-frame position.
    h = nn.Dense(
        d, kernel_init=named(nn.initializers.xavier_uniform(), ("channels", "embed")),
        bias_init=named(nn.initializers.zeros_init(), ("embed",)), name="embed", **kw,
    )(x.astype(self.dtype))
    tok_pos = self.param(
        "token_position", named(nn.initializers.normal(0.02), ("tokens", "embed")), (l, d),
        self.param_dtype,
    )
    h = (h + tok_pos.astype(self.dtype)).reshape(b, f * l, d)

    # Conditioning tokens: a learned context (a parameter, so it trains), plus the class
    # embedding when class-conditional (labels None -> the null label of guidance).
    ctx = self.param(
        "context", named(nn.initializers.normal(0.02), ("cond", "embed")), (nc, d),
        self.param_dtype,
    )
    ctx = jnp.broadcast_to(ctx.astype(self.dtype)[None], (b, nc, d))
    if self.num_classes:
      if labels is None:
        labels = jnp.full((b,), self.null_label, jnp.int32)
      emb = nn.Embed(
          self.num_classes + 1, d, embedding_init=named(nn.initializers.normal(0.02), ("classes", "embed")),
          name="label_embedding", **kw,
      )(labels)
      ctx = ctx + emb[:, None, :]
    seq = jnp.concatenate([ctx, h], axis=1)
    seq = nn.with_logical_constraint(seq, ("batch", "tokens", "act_embed"))

    # Conditioning vectors for adaLN: one per frame from its timestep, one for the context.
    c_frames = layers.TimestepEmbedder(d, name="timestep_embedding", **kw)(t)
    c_ctx = self.param(
        "context_conditioning", named(nn.initializers.normal(0.02), ("embed",)), (d,),
        self.param_dtype,
    )
    cond = jnp.concatenate(
        [jnp.broadcast_to(c_ctx.astype(self.dtype), (b, 1, d)), c_frames.astype(self.dtype)], axis=1
    )  # [B, 1 + F, D]

    positions = token_positions(nc, f, l)
    cos, sin = layers.rope_angles(jnp.asarray(positions), d // self.num_heads, self.rope_theta)
    mask = jnp.asarray(attention_mask(nc, f, l, self.context_attends_video))

    block_cls = nn.remat(Block) if self.remat else Block
    for i in range(self.depth):
      seq = block_cls(self.num_heads, self.mlp_ratio, nc, l, name=f"block_{i}", **kw)(
          seq, cond, cos, sin, mask
      )

    # Final adaLN (shift, scale) and a zero-initialised projection back to the channels.
    mod = nn.Dense(
        2 * d, kernel_init=named(nn.initializers.zeros_init(), ("embed", "mlp")),
        bias_init=named(nn.initializers.zeros_init(), ("mlp",)), name="final_adaLN", **kw,
    )(nn.silu(cond))
    shift, scale = jnp.split(per_token(mod, nc, l), 2, axis=-1)
    seq = layers.modulate(layers.layer_norm(seq), shift, scale)
    out = nn.Dense(
        c, kernel_init=named(nn.initializers.zeros_init(), ("embed", "channels")),
        bias_init=named(nn.initializers.zeros_init(), ("channels",)), name="final", **kw,
    )(seq[:, nc:])
    return out.reshape(b, f, l, c).astype(jnp.float32)
