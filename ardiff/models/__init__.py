"""Models: the causal video DiT (dit.py) and its layers (layers.py)."""

import jax.numpy as jnp

from ardiff.models.dit import VideoDiT, attention_mask


def build_model(config) -> VideoDiT:
  """The denoiser described by a whole config (a file of configs/): uses config.model."""
  m = config.model
  return VideoDiT(
      num_frames=m.num_frames,
      tokens_per_frame=m.tokens_per_frame,
      in_channels=m.in_channels,
      hidden_size=m.hidden_size,
      depth=m.depth,
      num_heads=m.num_heads,
      mlp_ratio=m.mlp_ratio,
      num_classes=m.num_classes,
      num_context_tokens=m.num_context_tokens,
      context_attends_video=m.context_attends_video,
      rope_theta=m.rope_theta,
      remat=m.remat,
      remat_policy=m.remat_policy,
      dtype=jnp.dtype(m.dtype),
      param_dtype=jnp.dtype(m.param_dtype),
  )


__all__ = ["VideoDiT", "attention_mask", "build_model"]
