"""Building blocks of the models: timestep embedding, RoPE over frames, attention, MLP, and the
3x3 convolutions of the DiT's pixel layers and of the autoencoders.

Every parameter carries logical axis names (embed, heads, kv, mlp, ...) that the mesh rules in
the config map to device axes; main activations are constrained by name as well.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ardiff.models import attention

Dtype = jnp.dtype

# Weight initialisers wrapped with logical names.
_xavier = nn.initializers.xavier_uniform()
_zeros = nn.initializers.zeros_init()


# Conv kernels [kh, kw, in, out]: small next to the transformers, replicated.
CONV_AXES = (None, None, "conv_in", "conv_out")


def named(init, names):
  return nn.with_logical_partitioning(init, names)


def sinusoidal_embedding(t: jax.Array, dim: int, max_period: float = 10_000.0) -> jax.Array:
  """[...] float timesteps -> [..., dim] (cos, sin) features, as in DiT / ADM."""
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  args = t.astype(jnp.float32)[..., None] * freqs
  return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


class TimestepEmbedder(nn.Module):
  """Integer timestep (one per frame) -> hidden vector, through sinusoids and a 2-layer MLP."""

  hidden_size: int
  frequency_dim: int = 256
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, t: jax.Array) -> jax.Array:  # [B, F] -> [B, F, D]
    h = sinusoidal_embedding(t, self.frequency_dim)
    init = nn.initializers.normal(0.02)
    h = nn.Dense(
        self.hidden_size, dtype=self.dtype, param_dtype=self.param_dtype,
        kernel_init=named(init, (None, "embed")), bias_init=named(_zeros, ("embed",)), name="fc1",
    )(h)
    h = nn.silu(h)
    return nn.Dense(
        self.hidden_size, dtype=self.dtype, param_dtype=self.param_dtype,
        kernel_init=named(init, ("mlp", "embed")), bias_init=named(_zeros, ("embed",)), name="fc2",
    )(h)


def rope_angles(positions: jax.Array, head_dim: int, theta: float,
                axis_dims: tuple[int, ...] | None = None) -> tuple[jax.Array, jax.Array]:
  """cos, sin [S, head_dim // 2] for integer positions [S], or [S, A] along A axes (axial RoPE):
  axis a then rotates axis_dims[a] of the head's dimensions (they sum to head_dim) with its
  own geometric ladder of frequencies, as 1D RoPE does over a head of that size."""
  if axis_dims is None:
    positions, axis_dims = positions[:, None], (head_dim,)
  if sum(axis_dims) != head_dim or any(d % 2 for d in axis_dims):
    raise ValueError(f"RoPE axis dims {axis_dims} must be even and sum to head_dim={head_dim}.")
  angles = [
      positions[:, a].astype(jnp.float32)[:, None]
      * (1.0 / theta ** (np.arange(0, d, 2, dtype=np.float32) / d))[None, :]
      for a, d in enumerate(axis_dims)
  ]
  angles = jnp.concatenate(angles, axis=1)
  return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
  """Rotates [B, S, H, Dh] by the per-position angles (rotate-half convention)."""
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  c, s = cos[None, :, None, :], sin[None, :, None, :]
  return jnp.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], axis=-1).astype(x.dtype)


class HeadsIn(nn.Module):
  """The parameters of one projection [B, S, D] -> [B, S, H, Dh] (query, key or value), which
  heads_in applies. Explicit 3-D kernel (not DenseGeneral, which initialises a flattened 2-D
  kernel that cannot carry three logical axis names), set up eagerly so that Attention can read
  several and project through them at once."""

  in_features: int
  num_heads: int
  head_dim: int
  param_dtype: Dtype = jnp.float32

  def setup(self):
    init = nn.initializers.xavier_uniform(in_axis=0, out_axis=(1, 2))
    shape = (self.in_features, self.num_heads, self.head_dim)
    self.kernel = self.param("kernel", named(init, ("embed", "heads", "kv")), shape,
                             self.param_dtype)
    self.bias = self.param("bias", named(_zeros, ("heads", "kv")), shape[1:], self.param_dtype)


def heads_in(x, projections, dtype) -> list[jax.Array]:
  """x [B, S, D] through several HeadsIn at once: one matmul over their kernels stacked [D, n, H,
  Dh] (query, key and value: one product and two gradient products instead of three each, about
  6 % more train steps a second for the 16x16 demo on a 2-core CPU, BENCHMARKS.md). Stacked on a
  new axis rather than joined along the heads, so that heads split over devices stay split."""
  kernel = jnp.stack([p.kernel for p in projections], axis=1).astype(dtype)
  bias = jnp.stack([p.bias for p in projections], axis=0).astype(dtype)
  out = jnp.einsum("bsd,dihk->bsihk", x.astype(dtype), kernel) + bias
  # Split rather than indexed: the gradient is then one concatenation of the three, where
  # indexing's is three padded copies added up (about 1.1 ms of a 30 ms step on two cores).
  return [jnp.squeeze(o, 2) for o in jnp.split(out, len(projections), axis=2)]


class HeadsOut(nn.Module):
  """[B, S, H, Dh] -> [B, S, D], the output projection of attention."""

  features: int | None = None  # default: H * Dh
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    h, k = x.shape[-2:]
    d = self.features or h * k
    init = nn.initializers.xavier_uniform(in_axis=(0, 1), out_axis=2)
    kernel = self.param("kernel", named(init, ("heads", "kv", "embed")), (h, k, d), self.param_dtype)
    bias = self.param("bias", named(_zeros, ("embed",)), (d,), self.param_dtype)
    return jnp.einsum("bshk,hkd->bsd", x.astype(self.dtype), kernel.astype(self.dtype)) + bias.astype(self.dtype)


class Attention(nn.Module):
  """Multi-head self-attention with RoPE (over frame positions) and a boolean mask."""

  num_heads: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  impl: str = "xla"  # attention.IMPLEMENTATIONS (config.model.attention_impl)

  @nn.compact
  def __call__(self, x, cos, sin, mask, kv_prefix=None, return_kv=False, static_mask=None):
    """x [B, S, D]; cos/sin [S, Dh/2]; mask bool [S, P + S] (query, key): True = may attend.

    kv_prefix: (k, v) [B, P, H, Dh] of P tokens computed earlier (keys already rotated),
    attended before the S own tokens: the KV cache of sampling. None: P = 0.
    return_kv: also return the own (k, v) [B, S, H, Dh] (keys rotated), to be cached.
    static_mask: the mask as a numpy array where it is known at trace time (for "splash").
    """
    d = x.shape[-1]
    head_dim = d // self.num_heads
    dense = lambda name: HeadsIn(d, self.num_heads, head_dim, self.param_dtype, name=name)
    # [B, S, H, Dh] each, from one matmul
    q, k, v = heads_in(x, [dense("query"), dense("key"), dense("value")], self.dtype)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    q = nn.with_logical_constraint(q, ("batch", "tokens", "heads", "kv"))
    k = nn.with_logical_constraint(k, ("batch", "tokens", "heads", "kv"))
    own_kv = (k, v)
    if kv_prefix is not None:
      k = jnp.concatenate([kv_prefix[0].astype(k.dtype), k], axis=1)  # [B, P + S, H, Dh]
      v = jnp.concatenate([kv_prefix[1].astype(v.dtype), v], axis=1)
    impl = attention.resolve(self.impl, self.dtype, head_dim)
    out = attention.attend(q, k, v, mask, impl, static_mask)
    out = nn.with_logical_constraint(out, ("batch", "tokens", "heads", "kv"))
    out = HeadsOut(dtype=self.dtype, param_dtype=self.param_dtype, name="out")(out)
    return (out, own_kv) if return_kv else out


class Mlp(nn.Module):
  hidden_dim: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    d = x.shape[-1]
    h = nn.Dense(
        self.hidden_dim, dtype=self.dtype, param_dtype=self.param_dtype,
        kernel_init=named(_xavier, ("embed", "mlp")), bias_init=named(_zeros, ("mlp",)), name="fc1",
    )(x)
    h = nn.with_logical_constraint(nn.gelu(h, approximate=True), ("batch", "tokens", "mlp"))
    return nn.Dense(
        d, dtype=self.dtype, param_dtype=self.param_dtype,
        kernel_init=named(_xavier, ("mlp", "embed")), bias_init=named(_zeros, ("embed",)), name="fc2",
    )(h)


def layer_norm(x: jax.Array, eps: float = 1e-6) -> jax.Array:
  """Parameter-free LayerNorm in float32 (adaLN supplies the scale and shift)."""
  x32 = x.astype(jnp.float32)
  mean = jnp.mean(x32, axis=-1, keepdims=True)
  var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
  return ((x32 - mean) * jax.lax.rsqrt(var + eps)).astype(x.dtype)


def modulate(x, shift, scale):
  return x * (1.0 + scale) + shift


def sincos_positions(num_positions: int, dim: int) -> np.ndarray:
  """float32 [num_positions, dim]: fixed 1-D (sin, cos) features of positions 0..n-1, computed
  in float64 as MAE / DiT do (sines first, unlike sinusoidal_embedding's cosines first)."""
  if dim % 2:
    raise ValueError(f"sin-cos positions need an even width, got {dim}.")
  omega = 1.0 / 10_000.0 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
  angles = np.arange(num_positions, dtype=np.float64)[:, None] * omega[None, :]
  return np.concatenate([np.sin(angles), np.cos(angles)], axis=1).astype(np.float32)


class FusedAttention(nn.Module):
  """Multi-head self-attention with one fused query/key/value projection (kernel [D, 3, H, Dh]
  + bias [3, H, Dh], timm's `qkv` layout), a boolean mask and no position rotation."""

  num_heads: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, mask):
    """x [B, S, D]; mask bool [S, S] (query, key), True = may attend."""
    d = x.shape[-1]
    shape = (d, 3, self.num_heads, d // self.num_heads)
    init = nn.initializers.xavier_uniform(in_axis=0, out_axis=(1, 2, 3))
    kernel = self.param("qkv_kernel", named(init, ("embed", None, "heads", "kv")), shape,
                        self.param_dtype)
    bias = self.param("qkv_bias", named(_zeros, (None, "heads", "kv")), shape[1:], self.param_dtype)
    qkv = jnp.einsum("bsd,dihk->ibshk", x.astype(self.dtype), kernel.astype(self.dtype))
    q, k, v = qkv + bias.astype(self.dtype)[:, None, None]  # each [B, S, H, Dh]
    q = nn.with_logical_constraint(q, ("batch", "tokens", "heads", "kv"))
    out = jax.nn.dot_product_attention(q, k, v, mask=mask[None, None])
    out = nn.with_logical_constraint(out, ("batch", "tokens", "heads", "kv"))
    return HeadsOut(dtype=self.dtype, param_dtype=self.param_dtype, name="out")(out)


def conv(features: int, kernel: int, name: str | None = None, *, strides: int = 1,
         use_bias: bool = True, dtype=jnp.float32, param_dtype=jnp.float32,
         kernel_init=nn.initializers.lecun_normal(), bias_init=_zeros) -> nn.Conv:
  """A convolution padded to keep the size at stride 1 (the reference's Conv2dSame); strides > 1
  downsample by that factor."""
  return nn.Conv(
      features, (kernel, kernel), strides=strides, padding="SAME", use_bias=use_bias, name=name,
      dtype=dtype, param_dtype=param_dtype, kernel_init=named(kernel_init, CONV_AXES),
      bias_init=named(bias_init, ("conv_out",)),
  )
