"""Scaled dot-product attention with a boolean mask, in the implementation the config names.

config.model.attention_impl:
- "xla": jax.nn.dot_product_attention's XLA path (logits and probabilities materialised). Runs
  everywhere. Where the mask is static the queries go in chunks, each against only the keys it
  may see, so the blocks above the frame-causal diagonal are not computed.
- "cudnn": cuDNN's fused flash attention through jax.nn.dot_product_attention, GPU only, in
  bfloat16 or float16, head size a multiple of 8 up to 128. The frame-causal mask is not one of
  cuDNN's built-in masks, so it goes in as a mask tensor (still fused: no logits in HBM).
- "splash": the Pallas splash-attention kernel (TPU), which skips the blocks that the
  frame-causal mask zeroes (about half of a window's attention). It needs the mask as a static
  array, so it serves the full-window passes (training, plain sampling, the context's keys);
  the KV cache's calls, whose mask depends on the cache's state, run on "xla". Off TPU the same
  kernel runs in Pallas' interpreter (slow: for tests only).
- "auto": cudnn on a GPU where it applies, splash on a TPU, xla elsewhere.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash_lib
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as mask_lib

IMPLEMENTATIONS = ("xla", "cudnn", "splash", "auto")

# "xla" with a static mask: queries in this many chunks, each against the keys it may attend.
XLA_QUERY_CHUNKS = 4
# The kernel's tiles: sequences are padded to a multiple of the smallest.
_SPLASH_BLOCKS = (512, 256, 128)


def resolve(impl: str, dtype, head_dim: int) -> str:
  """The implementation that `impl` names on this backend: "xla", "cudnn" or "splash"."""
  if impl not in IMPLEMENTATIONS:
    raise ValueError(f"config.model.attention_impl={impl!r}: one of {IMPLEMENTATIONS}.")
  backend = jax.default_backend()
  cudnn_ok = (
      backend == "gpu"
      and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16)
      and head_dim % 8 == 0
      and head_dim <= 128
  )
  if impl == "auto":
    return "cudnn" if cudnn_ok else "splash" if backend == "tpu" else "xla"
  if impl == "cudnn" and not cudnn_ok:
    raise ValueError(
        f"attention_impl='cudnn' needs a GPU (this backend: {backend}), model.dtype bfloat16 or"
        f" float16 (got {jnp.dtype(dtype).name}) and a head size that is a multiple of 8 up to"
        f" 128 (got {head_dim}); use 'auto' to fall back to 'xla' where it does not apply."
    )
  return impl


def attend(q, k, v, mask, impl: str, static_mask: np.ndarray | None = None) -> jax.Array:
  """q [B, T, H, Dh], k and v [B, S, H, Dh], mask bool [T, S] (True: may attend) -> [B, T, H, Dh].

  impl: a resolved implementation (resolve). static_mask: the same mask as a numpy array where
  it is known at trace time; "splash" needs it and falls back to "xla" without it.
  """
  if impl == "splash" and static_mask is not None:
    return _splash(q, k, v, static_mask)
  if impl == "cudnn":
    return jax.nn.dot_product_attention(q, k, v, mask=mask[None, None], implementation="cudnn")
  if static_mask is not None:
    return _xla_by_query_chunks(q, k, v, static_mask)
  return jax.nn.dot_product_attention(q, k, v, mask=mask[None, None], implementation="xla")


def _xla_by_query_chunks(q, k, v, mask: np.ndarray):
  """XLA's attention on chunks of the queries, each against the keys up to the last one any of
  its rows may attend: under the frame-causal mask the chunks of early frames skip the keys of
  later ones, so logits, probabilities and their gradients shrink to about (n + 1) / 2n of the
  full square (less memory traffic, which dominates attention on CPUs)."""
  t = q.shape[1]
  bounds = np.linspace(0, t, min(XLA_QUERY_CHUNKS, t) + 1).astype(int)
  outs = []
  for lo, hi in zip(bounds[:-1], bounds[1:]):
    rows = mask[lo:hi]
    end = int(np.nonzero(rows.any(axis=0))[0].max()) + 1 if rows.any() else 1
    outs.append(jax.nn.dot_product_attention(
        q[:, lo:hi], k[:, :end], v[:, :end], mask=jnp.asarray(rows[:, :end])[None, None],
        implementation="xla",
    ))
  return outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=1)


def _splash(q, k, v, mask: np.ndarray) -> jax.Array:
  t, dh = q.shape[1], q.shape[3]
  s = k.shape[1]
  unit = _SPLASH_BLOCKS[-1]
  tp, sp = -(-t // unit) * unit, -(-s // unit) * unit
  # Padded keys are masked out; padded queries attend to key 0 only (a fully masked row has no
  # softmax) and are dropped afterwards.
  padded = np.zeros((tp, sp), bool)
  padded[:t, :s] = mask
  padded[t:, 0] = True
  interpret = jax.default_backend() != "tpu"

  def per_shard(q, k, v):  # [b, T, h, Dh] of this device's batch and heads
    kernel = _splash_kernel(padded, q.shape[2], interpret)
    pad = lambda x, n: jnp.pad(x, ((0, 0), (0, n - x.shape[1]), (0, 0), (0, 0)))
    heads_first = lambda x: jnp.swapaxes(x, 1, 2)
    out = jax.vmap(kernel)(
        heads_first(pad(q * (dh**-0.5), tp)), heads_first(pad(k, sp)), heads_first(pad(v, sp))
    )
    return jnp.swapaxes(out, 1, 2)[:, :t].astype(q.dtype)

  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return per_shard(q, k, v)
  # The kernel is not partitioned by XLA: run it per device on its share of batch and heads
  # (the tokens of one example stay whole), as the mesh rules lay the activations out.
  batch_axes, _, head_axes, _ = nn.logical_to_mesh_axes(("batch", "tokens", "heads", "kv"))
  spec = jax.sharding.PartitionSpec(batch_axes, None, head_axes, None)
  return jax.shard_map(per_shard, in_specs=(spec, spec, spec), out_specs=spec, check_vma=False)(
      q, k, v
  )


def _splash_kernel(mask: np.ndarray, heads: int, interpret: bool):
  """The kernel for this mask (building it analyses the mask's blocks on the host). Built
  anew in each trace: it holds arrays, which must belong to the trace that uses them."""
  t, s = mask.shape
  block_q = next(b for b in _SPLASH_BLOCKS if t % b == 0)
  block_kv = next(b for b in _SPLASH_BLOCKS if s % b == 0)
  sizes = splash_lib.BlockSizes(
      block_q=block_q, block_kv=block_kv, block_kv_compute=block_kv,
      block_q_dkv=block_q, block_kv_dkv=block_kv, block_kv_dkv_compute=block_kv,
      block_q_dq=block_q, block_kv_dq=block_kv,
  )
  heads_mask = mask_lib.MultiHeadMask([mask_lib.NumpyMask(mask)] * heads)
  return splash_lib.make_splash_mha(
      heads_mask, head_shards=1, q_seq_shards=1, block_sizes=sizes, interpret=interpret
  )
