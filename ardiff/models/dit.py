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

from ardiff.data import patches
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


ROPE_AXES = ("frame", "frame_row_col")


def sincos_positions(num_tokens: int, dim: int) -> np.ndarray:
  """float32 [num_tokens, dim]: sine-cosine position codes (DiT/MAE), 2D over a square grid of
  tokens (half the channels for rows, half for columns), else 1D over the token index."""
  def one_axis(pos, d):
    freqs = 1.0 / 10_000 ** (np.arange(d // 2) / (d // 2))
    angles = np.outer(pos, freqs)
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)

  side = int(round(np.sqrt(num_tokens)))
  if side * side == num_tokens and dim % 4 == 0:
    rows, cols = np.divmod(np.arange(num_tokens), side)
    table = np.concatenate([one_axis(rows, dim // 2), one_axis(cols, dim // 2)], axis=1)
    return table.astype(np.float32)
  if dim % 2:
    raise ValueError(f"sincos token positions need an even hidden_size, not {dim}.")
  return one_axis(np.arange(num_tokens), dim).astype(np.float32)


def token_positions(num_context: int, num_frames: int, tokens_per_frame: int) -> np.ndarray:
  return np.concatenate(
      [np.full(num_context, CONTEXT_POSITION), np.repeat(np.arange(num_frames), tokens_per_frame)]
  ).astype(np.int32)


def in_frame_positions(num_context: int, num_frames: int, tokens_per_frame: int) -> np.ndarray:
  """Each token's index in its frame (the conditioning tokens: 0), beside token_positions."""
  return np.concatenate(
      [np.zeros(num_context), np.tile(np.arange(tokens_per_frame), num_frames)]
  ).astype(np.int32)


def per_token(v: jax.Array, num_context: int, tokens_per_frame: int) -> jax.Array:
  """[B, 1 + F, D] (context row, then one row per frame) -> [B, Nc + F * L, D].

  num_context may be 0 (frames only): the context row is then dropped.
  """
  b, rows, d = v.shape
  ctx = jnp.broadcast_to(v[:, :1], (b, num_context, d))
  vid = jnp.broadcast_to(v[:, 1:, None], (b, rows - 1, tokens_per_frame, d))
  return jnp.concatenate([ctx, vid.reshape(b, -1, d)], axis=1)


class Block(nn.Module):
  """Transformer block with adaLN-Zero: shift, scale and gate for attention and for the MLP.

  The body of VideoDiT's scan over layers, one signature for every entry point: the residual
  stream x is the carry, the keys/values of earlier tokens (kv_prefix) come in per layer and the
  block's own keys/values go out per layer. Mixed precision: x, the norms and the adaLN
  modulation stay float32; attention and the MLP run in `dtype`.
  """

  hidden_size: int
  num_heads: int
  mlp_ratio: float
  tokens_per_frame: int
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32
  attention_impl: str = "xla"
  context_attends_video: bool = False

  def setup(self):
    d, kw = self.hidden_size, dict(dtype=self.dtype, param_dtype=self.param_dtype)
    # float32: the gates scale the updates of the float32 residual stream (a few rows only).
    self.adaLN = nn.Dense(
        6 * d, kernel_init=named(nn.initializers.zeros_init(), ("embed", "mlp")),
        bias_init=named(nn.initializers.zeros_init(), ("mlp",)), dtype=jnp.float32,
        param_dtype=self.param_dtype,
    )
    self.attn = layers.Attention(self.num_heads, impl=self.attention_impl, **kw)
    self.mlp = layers.Mlp(int(d * self.mlp_ratio), **kw)

  def __call__(self, x, kv_prefix, c, cos, sin, mask):
    """x float32 [B, S, D]: n conditioning tokens, then F frames of L tokens (S = n + F * L).

    n is Nc, or 0 where a pass runs frames only (decode). c [B, 1 + F, D]: the conditioning
    vectors of the context (its row unused when n = 0) and of each frame. kv_prefix: (k, v)
    [B, P, H, Dh] of P earlier tokens (the KV cache), or None (P = 0); cos, sin [S, Dh / 2];
    mask bool [S, P + S], or None for a full pass without cached keys (the window or the
    context alone), whose frame-causal mask the block derives from the shapes. Returns x and
    the own (k, v) [B, S, H, Dh] in `dtype` (keys rotated); where nothing reads them
    (training) XLA drops them from the scan.
    """
    l = self.tokens_per_frame
    n = x.shape[1] - (c.shape[1] - 1) * l
    mod = per_token(self.adaLN(nn.silu(c)), n, l)  # [B, S, 6D]
    shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = jnp.split(mod, 6, axis=-1)
    h = layers.modulate(layers.layer_norm(x), shift_a, scale_a)
    static = None
    if mask is None:  # a full pass (window or context): its mask follows from the shapes
      static = attention_mask(n, c.shape[1] - 1, l, self.context_attends_video)
      mask = jnp.asarray(static)
    h, kv = self.attn(h, cos, sin, mask, kv_prefix, return_kv=True, static_mask=static)
    x = x + gate_a * h  # float32: the updates are rounded, the stream is not
    h = layers.modulate(layers.layer_norm(x), shift_m, scale_m)
    x = x + gate_m * self.mlp(h)
    return nn.with_logical_constraint(x, ("batch", "tokens", "act_embed")), kv


# config.model.remat_policy -> jax.checkpoint_policies: what the backward pass keeps of a
# block's forward pass; the rest is recomputed.
REMAT_POLICIES = {
    # Full remat: only each block's input is kept (least memory, one more forward pass).
    "nothing_saveable": jax.checkpoint_policies.nothing_saveable,
    # Every matmul output kept, attention logits included.
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
    # The projections and the MLP kept, the attention logits (batched over heads) recomputed.
    "dots_with_no_batch_dims_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    # Everything kept: as without remat (for comparison).
    "everything_saveable": jax.checkpoint_policies.everything_saveable,
}


class VideoDiT(nn.Module):
  """x [B, F, L, C], t int32 [B, F], labels int32 [B] or None -> prediction [B, F, L, C].

  Besides the forward pass (`__call__`, training and plain sampling), two methods serve the
  KV cache of sampling (ardiff/sampling.py), called as `model.apply(variables, ...,
  method="context_kv" | "decode")`: the conditioning tokens' keys/values, and a pass over some
  frames of a window against the keys/values of everything before them. All three run the
  blocks as one nn.scan over layers (parameters "blocks", stacked [depth, ...]), so tracing
  and compiling do not grow with depth.
  """

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
  # Init of the learned token-in-frame position: "normal" (N(0, 0.02^2)) or "sincos" (the 2D
  # sine-cosine table of DiT/MAE over the frame's patch grid, 1D for latent tokens; with the
  # default rope_axes RoPE covers only the frame index, so this is all a token knows of where it
  # sits in its frame).
  token_position_init: str = "normal"
  # What RoPE rotates by: "frame" (the frame index over the whole head) or "frame_row_col"
  # (axial: half the head by the frame index, a quarter each by the token's row and column in
  # its frame's patch grid), which gives attention the relative position in the frame too, so
  # "the same place in the frame before" is there from the start instead of learned.
  rope_axes: str = "frame"
  # Pixel convolutions around the transformer, for pixel-patch tokens (0: none, the paper's
  # linear patch embedding and head). A linear map per patch cannot shift a stroke by less than
  # a patch; 3x3 convolutions over the frame's pixels can. conv_stem_channels: two of them give
  # each pixel features of its neighbourhood, patchified beside the raw patch into the
  # embedding. conv_head_channels: a second head, the tokens projected to that many channels
  # per pixel, one residual 3x3 convolution, then a zero-initialised one to the pixel channels,
  # added to the linear head's output. Per frame, so the KV cache stays exact. Needs patch_size.
  conv_stem_channels: int = 0
  conv_head_channels: int = 0
  patch_size: int = 0  # pixels per patch side (pixel configs; only the convolutions read it)
  remat: bool = False
  remat_policy: str = "nothing_saveable"  # a key of REMAT_POLICIES
  # Layers per iteration of the scan over blocks (nn.scan's unroll; the parameters stay stacked
  # [depth, ...] either way). 1: one block compiled whatever the depth. The depth (or more): no
  # loop, which on CPUs saves the loop's stacked-activation buffers and dynamic weight slices
  # (the demo's 4 layers: a sixth off the forward and backward pass, 5 % off the whole train
  # step, BENCHMARKS.md), for a compile that grows with the depth.
  scan_unroll: int = 1
  attention_impl: str = "xla"  # ardiff/models/attention.py
  dtype: jnp.dtype = jnp.float32  # of the matmuls of attention and MLP (and of the KV cache)
  param_dtype: jnp.dtype = jnp.float32

  @property
  def null_label(self) -> int:
    return self.num_classes

  @property
  def grid_side(self) -> int:
    """Tokens per side of a frame's patch grid, where tokens_per_frame is a square."""
    return int(round(np.sqrt(self.tokens_per_frame)))

  def setup(self):
    d, nc = self.hidden_size, self.num_context_tokens
    # Mixed precision: everything but the blocks' attention and MLP runs in float32 (embeddings,
    # conditioning, the residual stream, the final layer); they are a small part of the FLOPs,
    # and with x0-prediction the last DDIM step returns the final layer's output almost as is.
    kw = dict(dtype=jnp.float32, param_dtype=self.param_dtype)
    normal = nn.initializers.normal(0.02)
    zeros = nn.initializers.zeros_init()
    # Tokens of the frames: linear patch/latent embedding plus the token-in-frame position.
    self.embed = nn.Dense(
        d, kernel_init=named(nn.initializers.xavier_uniform(), ("channels", "embed")),
        bias_init=named(zeros, ("embed",)), **kw,
    )
    if self.token_position_init == "sincos":
      table = sincos_positions(self.tokens_per_frame, d)
      position_init = lambda key, shape, dtype: jnp.asarray(table, dtype)  # noqa: E731
    elif self.token_position_init == "normal":
      position_init = normal
    else:
      raise ValueError(f"model.token_position_init={self.token_position_init!r}: 'normal' or"
                       " 'sincos'.")
    if self.rope_axes not in ROPE_AXES:
      raise ValueError(f"model.rope_axes={self.rope_axes!r}: one of {ROPE_AXES}.")
    if self.rope_axes == "frame_row_col":
      if self.grid_side ** 2 != self.tokens_per_frame or (self.hidden_size // self.num_heads) % 8:
        raise ValueError(
            "model.rope_axes='frame_row_col' needs a square grid of patch tokens per frame and a"
            f" head size divisible by 8, not {self.tokens_per_frame} tokens and head size"
            f" {self.hidden_size // self.num_heads}; use 'frame' (latent tokens have no grid).")
    self.token_position = self.param(
        "token_position", named(position_init, ("tokens", "embed")), (self.tokens_per_frame, d),
        self.param_dtype,
    )
    # Conditioning tokens: a learned context (a parameter, so it trains), plus the class
    # embedding when class-conditional.
    self.context = self.param(
        "context", named(normal, ("cond", "embed")), (nc, d), self.param_dtype
    )
    if self.num_classes:
      self.label_embedding = nn.Embed(
          self.num_classes + 1, d, embedding_init=named(normal, ("classes", "embed")), **kw
      )
    # Conditioning vectors for adaLN: one per frame from its timestep, one for the context.
    self.timestep_embedding = layers.TimestepEmbedder(d, **kw)
    self.context_conditioning = self.param(
        "context_conditioning", named(normal, ("embed",)), (d,), self.param_dtype
    )
    if self.scan_unroll < 1:
      raise ValueError(
          f"config.model.scan_unroll={self.scan_unroll}: 1 (a loop over the layers) or more (the"
          f" depth or above: no loop)."
      )
    if self.remat_policy not in REMAT_POLICIES:
      raise ValueError(
          f"config.model.remat_policy {self.remat_policy!r}: one of {sorted(REMAT_POLICIES)}."
      )
    block_cls = Block
    if self.remat:
      # prevent_cse=False: the scan already keeps XLA from merging the recomputation into the
      # forward pass (as in MaxText); the barriers would only cost.
      block_cls = nn.remat(
          Block, prevent_cse=False, policy=REMAT_POLICIES[self.remat_policy]
      )
    # One scanned block: every parameter gets a leading layer axis [depth, ...] (logical name
    # "layers"), and the block is traced and compiled once whatever the depth.
    self.blocks = nn.scan(
        block_cls,
        variable_axes={"params": 0},
        split_rngs={"params": True},
        # x is the carry; kv_prefix per layer; c, cos, sin and mask the same for every layer.
        in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast),
        out_axes=0,  # the own (k, v) per layer: [depth, B, S, H, Dh]
        length=self.depth,
        unroll=self.scan_unroll,
        metadata_params={nn.PARTITION_NAME: "layers"},
    )(
        d, self.num_heads, self.mlp_ratio, self.tokens_per_frame, self.dtype, self.param_dtype,
        self.attention_impl, self.context_attends_video,
    )
    # Final adaLN (shift, scale) and a zero-initialised projection back to the channels.
    self.final_adaLN = nn.Dense(
        2 * d, kernel_init=named(zeros, ("embed", "mlp")), bias_init=named(zeros, ("mlp",)), **kw
    )
    self.final = nn.Dense(
        self.in_channels, kernel_init=named(zeros, ("embed", "channels")),
        bias_init=named(zeros, ("channels",)), **kw,
    )
    if self.conv_stem_channels or self.conv_head_channels:
      p = self.patch_size
      if not p or self.grid_side ** 2 != self.tokens_per_frame or self.in_channels % (p * p):
        raise ValueError(
            "model.conv_stem_channels / conv_head_channels convolve pixels: they need pixel"
            f" patches (model.patch_size, a square grid of tokens), not patch_size={p} with"
            f" {self.tokens_per_frame} tokens of {self.in_channels} channels; set both to 0 for"
            " latent tokens.")
    conv = lambda k, init=nn.initializers.lecun_normal(): layers.conv(  # noqa: E731
        k, 3, kernel_init=init, **kw)
    if self.conv_stem_channels:
      self.stem_convs = [conv(self.conv_stem_channels), conv(self.conv_stem_channels)]
    if self.conv_head_channels:
      k = self.conv_head_channels
      self.head_features = nn.Dense(
          self.patch_size ** 2 * k, kernel_init=named(nn.initializers.xavier_uniform(),
                                                      ("embed", "channels")),
          bias_init=named(zeros, ("channels",)), **kw)
      self.head_conv = conv(k)
      self.head_out = conv(self.in_channels // self.patch_size ** 2, zeros)

  def _check_input(self, x):
    _, f, l, c = x.shape
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
    d = self.hidden_size
    if d % self.num_heads or (d // self.num_heads) % 2:
      raise ValueError(f"hidden_size {d} must split into {self.num_heads} heads of even size.")

  def _to_pixels(self, x):  # [B, F, L, p * p * C] -> [B * F, H, W, C]
    r = self.patch_size * self.grid_side
    pixels = patches.unpatchify(x, self.patch_size, r, r)
    return pixels.reshape((-1,) + pixels.shape[2:])

  def _to_tokens(self, pixels, b):  # [B * F, H, W, C] -> [B, F, L, p * p * C]
    return patches.patchify(pixels.reshape((b, -1) + pixels.shape[1:]), self.patch_size)

  def _embed_frames(self, x):  # [B, F, L, C] -> float32 [B, F * L, D]
    b, f, l, _ = x.shape
    x = x.astype(jnp.float32)
    if self.conv_stem_channels:
      h = self._to_pixels(x)
      for layer in self.stem_convs:
        h = nn.silu(layer(h))
      x = jnp.concatenate([x, self._to_tokens(h, b)], axis=-1)
    h = self.embed(x) + self.token_position.astype(jnp.float32)
    return h.reshape(b, f * l, self.hidden_size)

  def _output(self, h, b, f):  # modulated tokens float32 [B, F * L, D] -> [B, F, L, C]
    out = self.final(h).reshape(b, f, self.tokens_per_frame, self.in_channels)
    if self.conv_head_channels:
      feats = self._to_pixels(self.head_features(h).reshape(b, f, self.tokens_per_frame, -1))
      feats = feats + self.head_conv(nn.silu(feats))
      out = out + self._to_tokens(self.head_out(nn.silu(feats)), b)
    return out.astype(jnp.float32)

  def _context_tokens(self, labels, batch_size):  # -> float32 [B, Nc, D]
    ctx = self.context.astype(jnp.float32)[None]
    ctx = jnp.broadcast_to(ctx, (batch_size,) + ctx.shape[1:])
    if self.num_classes:
      if labels is None:  # the null label of classifier-free guidance
        labels = jnp.full((batch_size,), self.null_label, jnp.int32)
      ctx = ctx + self.label_embedding(labels)[:, None, :]
    return ctx

  def _context_conditioning(self, batch_size):  # -> float32 [B, 1, D]
    c = self.context_conditioning.astype(jnp.float32)
    return jnp.broadcast_to(c, (batch_size, 1, self.hidden_size))

  def _rope(self, frames, tokens=None):
    """cos, sin for tokens at frame indices [S] and token-in-frame indices [S] (None: the
    conditioning tokens, or a pure shift in time: no rotation by row and column)."""
    dh = self.hidden_size // self.num_heads
    if self.rope_axes == "frame":
      return layers.rope_angles(frames, dh, self.rope_theta)
    rows, cols = ((jnp.zeros_like(frames),) * 2 if tokens is None
                  else jnp.divmod(tokens, self.grid_side))
    positions = jnp.stack([frames, rows, cols], axis=-1)
    return layers.rope_angles(positions, dh, self.rope_theta, (dh // 2, dh // 4, dh // 4))

  def __call__(self, x, t, labels=None):
    self._check_input(x)
    b, f, l, c = x.shape
    nc = self.num_context_tokens
    seq = jnp.concatenate([self._context_tokens(labels, b), self._embed_frames(x)], axis=1)
    seq = nn.with_logical_constraint(seq, ("batch", "tokens", "act_embed"))
    c_frames = self.timestep_embedding(t)  # [B, F, D]
    cond = jnp.concatenate([self._context_conditioning(b), c_frames], axis=1)  # [B, 1 + F, D]

    cos, sin = self._rope(jnp.asarray(token_positions(nc, f, l)),
                          jnp.asarray(in_frame_positions(nc, f, l)))
    seq, _ = self.blocks(seq, None, cond, cos, sin, None)  # [B, S, D]; the blocks make the mask

    shift, scale = jnp.split(per_token(self.final_adaLN(nn.silu(cond)), nc, l), 2, axis=-1)
    seq = layers.modulate(layers.layer_norm(seq), shift, scale)
    return self._output(seq[:, nc:], b, f)

  def context_kv(self, labels, batch_size: int):
    """Keys and values of the conditioning tokens in every layer: (k, v) [depth, B, Nc, H, Dh].

    Under strict causality they attend to each other only, so they depend on the labels alone
    (labels None: the null label) and serve every model call of a sampling run.
    """
    if self.context_attends_video:
      raise ValueError("With context_attends_video the context sees the frames: no KV cache.")
    nc = self.num_context_tokens
    h = self._context_tokens(labels, batch_size)
    c = self._context_conditioning(batch_size)
    cos, sin = self._rope(jnp.full((nc,), CONTEXT_POSITION, jnp.int32))
    _, kv = self.blocks(h, None, c, cos, sin, None)  # context only: every token sees every one
    return kv

  def shift_keys(self, keys, shift):
    """Cached keys [..., L, H, Dh], rotated at their positions p, rotated to p - shift instead
    (RoPE's rotations compose): the rolling KV cache moves frames down the window this way."""
    cos, sin = self._rope(jnp.reshape(-shift, (1,)))
    flat = keys.reshape((-1,) + keys.shape[-3:])  # [N, L, H, Dh]: any token axis broadcasts
    return layers.apply_rope(flat, cos, sin).reshape(keys.shape)

  def decode(self, x, t, positions, kv_prefix, prefix_valid):
    """The frames x [B, Q, L, C] of a window, at t [B, Q], against cached keys/values.

    positions int [Q]: the frames' indices within the window (RoPE), increasing; a frame sees
    the valid prefix tokens and the frames of x at its position or before. kv_prefix: (k, v)
    [depth, B, P, H, Dh] from context_kv and earlier decode calls; prefix_valid bool [P].
    Returns the prediction [B, Q, L, C] (as __call__ gives for these frames when the window
    holds the prefix's frames before them) and the frames' own (k, v) [depth, B, Q * L, H, Dh].
    """
    self._check_input(x)
    b, q, l, c = x.shape
    h = self._embed_frames(x)  # [B, Q * L, D]
    c_frames = self.timestep_embedding(t)  # [B, Q, D]
    # The blocks' layout: a context row first, whose tokens (none here) it would condition.
    cond = jnp.concatenate([self._context_conditioning(b), c_frames], axis=1)  # [B, 1 + Q, D]
    pos = jnp.repeat(jnp.asarray(positions, jnp.int32), l)  # [Q * L]
    cos, sin = self._rope(pos, jnp.asarray(in_frame_positions(0, q, l)))
    own = pos[None, :] <= pos[:, None]
    prefix = jnp.broadcast_to(prefix_valid[None, :], (q * l, prefix_valid.shape[0]))
    mask = jnp.concatenate([prefix, own], axis=1)  # [Q * L, P + Q * L]
    h, kv = self.blocks(h, tuple(kv_prefix), cond, cos, sin, mask)

    shift, scale = jnp.split(jnp.repeat(self.final_adaLN(nn.silu(c_frames)), l, axis=1), 2, axis=-1)
    h = layers.modulate(layers.layer_norm(h), shift, scale)
    return self._output(h, b, q), kv
