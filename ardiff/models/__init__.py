"""Models: the causal video DiT (dit.py), the reference's DiT for its released checkpoints
(reference_dit.py), and their layers (layers.py)."""

import jax.numpy as jnp

from ardiff.models.dit import VideoDiT, attention_mask
from ardiff.models.reference_dit import ReferenceDiT

VARIANTS = ("ardiff", "reference")


def build_model(config) -> VideoDiT | ReferenceDiT:
  """The denoiser described by a whole config (a file of configs/): uses config.model, whose
  `variant` picks ardiff's own model or the reference's (to run its released checkpoints)."""
  m = config.model
  variant = m.get("variant", "ardiff")
  common = dict(
      num_frames=m.num_frames,
      tokens_per_frame=m.tokens_per_frame,
      in_channels=m.in_channels,
      hidden_size=m.hidden_size,
      depth=m.depth,
      num_heads=m.num_heads,
      mlp_ratio=m.mlp_ratio,
      num_classes=m.num_classes,
      remat=m.remat,
      remat_policy=m.remat_policy,
      dtype=jnp.dtype(m.dtype),
      param_dtype=jnp.dtype(m.param_dtype),
  )
  if variant == "reference":
    return ReferenceDiT(context_tokens=m.reference_context_tokens,
                        context_dim=m.reference_context_dim, **common)
  if variant != "ardiff":
    raise ValueError(f"config.model.variant={variant!r}: one of {VARIANTS}.")
  return VideoDiT(
      num_context_tokens=m.num_context_tokens,
      context_attends_video=m.context_attends_video,
      rope_theta=m.rope_theta,
      token_position_init=m.get("token_position_init", "normal"),
      rope_axes=m.get("rope_axes", "frame"),
      conv_stem_channels=m.get("conv_stem_channels", 0),
      conv_head_channels=m.get("conv_head_channels", 0),
      scan_unroll=m.get("scan_unroll", 1),
      patch_size=config.data.patch_size,
      attention_impl=m.attention_impl,
      **common,
  )


__all__ = ["ReferenceDiT", "VARIANTS", "VideoDiT", "attention_mask", "build_model"]
