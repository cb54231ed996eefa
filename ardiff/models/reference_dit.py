"""The reference's denoiser (its DiT_crossattn, as every released checkpoint configures it), so
that those checkpoints run in ardiff: config.model.variant = "reference".

It differs from ardiff's VideoDiT (dit.py) in what the released weights mean:
- positions: fixed 1-D sin-cos features of the flat index of the F * L video tokens, added after
  the input projection (no RoPE, nothing learned); the conditioning tokens have none;
- conditioning: context_tokens tokens of width context_dim (a learned `context_emb`, or per class
  `class_emb` [num_classes + 1, ...]) through one linear layer to the hidden size;
- the block ("share_norm"): the parameter-free LayerNorm's output *replaces* the residual stream
  before attention and before the MLP; the video tokens are modulated and gated per frame from
  its timestep embedding (adaLN), the conditioning tokens pass unmodulated; fused qkv with bias;
- the mask ("video_temporal_causal"): video tokens see the context and their own and earlier
  frames, but the conditioning tokens see every frame, so after two layers later frames reach
  earlier ones through them (dit.attention_mask's context_attends_video): no KV cache;
- the final layer: parameter-free LayerNorm and a linear layer, no modulation.

Class labels follow the reference's convention: class y (0..num_classes - 1) reads class_emb[y]
and the null label (num_classes, classifier-free guidance) reads class_emb[0], the same row as
class 0 (the reference's flaw); class_emb[num_classes] is never read.
"""

import flax.linen as nn
import jax.numpy as jnp

from ardiff.models import layers
from ardiff.models.dit import REMAT_POLICIES, attention_mask, per_token
from ardiff.models.layers import named

# Why the sampler runs this variant without its KV cache (sampling.make_sampler logs it).
KV_CACHE_REFUSAL = (
    "config.model.variant='reference': its mask (the reference's video_temporal_causal) lets the"
    " conditioning tokens attend to every frame, so through them earlier frames depend on later"
    " ones and no keys/values stay valid from one call to the next; sampling runs every call on"
    " the whole window (config.sampling.kv_cache is ignored).")


class ReferenceBlock(nn.Module):
  """The share_norm block, the body of the scan over layers. x float32 [B, n + F * L, D] (n
  conditioning tokens first), c [B, F, D] the frames' timestep embeddings, mask bool [S, S]."""

  hidden_size: int
  num_heads: int
  mlp_ratio: float
  tokens_per_frame: int
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, c, mask):
    d, l = self.hidden_size, self.tokens_per_frame
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    b, f = c.shape[:2]
    n = x.shape[1] - f * l
    mod = nn.Dense(  # float32, as VideoDiT's: the gates scale the float32 stream's updates
        6 * d, kernel_init=named(nn.initializers.zeros_init(), ("embed", "mlp")),
        bias_init=named(nn.initializers.zeros_init(), ("mlp",)), dtype=jnp.float32,
        param_dtype=self.param_dtype, name="adaLN")(nn.silu(c))  # [B, F, 6D]
    # The conditioning tokens' row: shift 0, scale 0, gate 1, which leaves them exactly as they
    # are (x * (1 + 0) + 0 and 1 * h round to nothing).
    identity = jnp.concatenate([jnp.zeros(2 * d), jnp.ones(d), jnp.zeros(2 * d), jnp.ones(d)])
    rows = jnp.concatenate([jnp.broadcast_to(identity, (b, 1, 6 * d)), mod], axis=1)
    shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = jnp.split(per_token(rows, n, l), 6, -1)
    x = layers.layer_norm(x)  # share_norm: the normalised stream is what the update adds to
    h = layers.FusedAttention(self.num_heads, **kw, name="attn")(
        layers.modulate(x, shift_a, scale_a), mask)
    x = x + gate_a * h.astype(jnp.float32)
    x = layers.layer_norm(x)
    h = layers.Mlp(int(d * self.mlp_ratio), **kw, name="mlp")(layers.modulate(x, shift_m, scale_m))
    x = x + gate_m * h.astype(jnp.float32)
    return nn.with_logical_constraint(x, ("batch", "tokens", "act_embed")), None


class ReferenceDiT(nn.Module):
  """x [B, F, L, C], t int32 [B, F], labels int32 [B] or None -> prediction [B, F, L, C].

  Parameters (names; ardiff.convert maps the reference's onto them): embed (x_embedder),
  timestep_embedding (t_embedder), context_embed (c_embedder), context_emb or class_emb, blocks
  (stacked [depth, ...]: adaLN, attn, mlp) and final (final_layer).
  """

  num_frames: int
  tokens_per_frame: int
  in_channels: int
  hidden_size: int
  depth: int
  num_heads: int
  mlp_ratio: float = 4.0
  num_classes: int = 0
  context_tokens: int = 77
  context_dim: int = 768
  remat: bool = False
  remat_policy: str = "nothing_saveable"
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  # Read by the sampler: the conditioning tokens see the frames (no KV cache), and why.
  context_attends_video = True
  kv_cache_refusal = KV_CACHE_REFUSAL

  @property
  def null_label(self) -> int:
    return self.num_classes

  def setup(self):
    d = self.hidden_size
    kw = dict(dtype=jnp.float32, param_dtype=self.param_dtype)
    zeros = nn.initializers.zeros_init()
    xavier = nn.initializers.xavier_uniform()
    self.embed = nn.Dense(d, kernel_init=named(xavier, ("channels", "embed")),
                          bias_init=named(zeros, ("embed",)), **kw)
    self.timestep_embedding = layers.TimestepEmbedder(d, **kw)
    self.context_embed = nn.Dense(d, kernel_init=named(xavier, (None, "embed")),
                                  bias_init=named(zeros, ("embed",)), **kw)
    context = (self.context_tokens, self.context_dim)
    normal = nn.initializers.normal(0.1)  # the reference's randn * 0.1
    if self.num_classes:
      self.class_emb = self.param("class_emb", named(normal, ("classes", "cond", None)),
                                  (self.num_classes + 1,) + context, self.param_dtype)
    else:
      self.context_emb = self.param("context_emb", named(normal, ("cond", None)), context,
                                    self.param_dtype)
    if self.remat_policy not in REMAT_POLICIES:
      raise ValueError(
          f"config.model.remat_policy {self.remat_policy!r}: one of {sorted(REMAT_POLICIES)}.")
    block_cls = ReferenceBlock
    if self.remat:
      block_cls = nn.remat(ReferenceBlock, prevent_cse=False,
                           policy=REMAT_POLICIES[self.remat_policy])
    self.blocks = nn.scan(
        block_cls, variable_axes={"params": 0}, split_rngs={"params": True},
        in_axes=(nn.broadcast, nn.broadcast), length=self.depth,
        metadata_params={nn.PARTITION_NAME: "layers"},
    )(d, self.num_heads, self.mlp_ratio, self.tokens_per_frame, self.dtype, self.param_dtype)
    self.final = nn.Dense(self.in_channels, kernel_init=named(zeros, ("embed", "channels")),
                          bias_init=named(zeros, ("channels",)), **kw)

  def _check_input(self, x):
    _, f, l, c = x.shape
    if f > self.num_frames:
      raise ValueError(
          f"The model sees windows of at most {self.num_frames} frames (config.model.num_frames)"
          f" but got {f}; longer videos are generated through sliding windows (ad_schedule).")
    if l != self.tokens_per_frame or c != self.in_channels:
      raise ValueError(
          f"Input has {l} tokens x {c} channels per frame; the model is built for"
          f" {self.tokens_per_frame} x {self.in_channels} (config.model.tokens_per_frame /"
          " in_channels).")
    if self.hidden_size % self.num_heads:
      raise ValueError(f"hidden_size {self.hidden_size} must split into {self.num_heads} heads.")

  def _context(self, labels, batch_size):  # -> float32 [B, Nc, context_dim]
    if not self.num_classes:
      ctx = self.context_emb.astype(jnp.float32)
      return jnp.broadcast_to(ctx, (batch_size,) + ctx.shape)
    if labels is None:
      labels = jnp.full((batch_size,), self.null_label, jnp.int32)
    rows = jnp.where(labels == self.null_label, 0, labels)  # the reference's null row
    return self.class_emb.astype(jnp.float32)[rows]

  def __call__(self, x, t, labels=None):
    self._check_input(x)
    b, f, l, c = x.shape
    d, nc = self.hidden_size, self.context_tokens
    # Positions of the flat video tokens; a shorter window is the start of the trained one.
    positions = jnp.asarray(layers.sincos_positions(self.num_frames * l, d)[: f * l])
    video = self.embed(x.astype(jnp.float32)).reshape(b, f * l, d) + positions
    seq = jnp.concatenate([self.context_embed(self._context(labels, b)), video], axis=1)
    seq = nn.with_logical_constraint(seq, ("batch", "tokens", "act_embed"))
    mask = jnp.asarray(attention_mask(nc, f, l, context_attends_video=True))
    seq, _ = self.blocks(seq, self.timestep_embedding(t), mask)
    out = self.final(layers.layer_norm(seq[:, nc:]))
    return out.reshape(b, f, l, c).astype(jnp.float32)

  def context_kv(self, labels, batch_size: int):
    del labels, batch_size
    raise ValueError(KV_CACHE_REFUSAL + " Set config.sampling.kv_cache=False.")
