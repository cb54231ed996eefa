"""Pixel <-> model-space conversions that run inside jit (pure jax.numpy)."""

import einops
import jax.numpy as jnp


def patchify(video: jnp.ndarray, patch_size: int) -> jnp.ndarray:
  """[B, F, H, W, C] -> [B, F, L, p*p*C], L = (H/p)*(W/p) patches in row-major order."""
  h, w = video.shape[-3:-1]
  if h % patch_size or w % patch_size:
    raise ValueError(f"Frames of {h}x{w} cannot be cut into {patch_size}x{patch_size} patches.")
  return einops.rearrange(
      video, "... (h p) (w q) c -> ... (h w) (p q c)", p=patch_size, q=patch_size)


def unpatchify(tokens: jnp.ndarray, patch_size: int, height: int, width: int) -> jnp.ndarray:
  """[B, F, L, p*p*C] -> [B, F, height, width, C]; the inverse of `patchify`."""
  return einops.rearrange(
      tokens, "... (h w) (p q c) -> ... (h p) (w q) c",
      h=height // patch_size, w=width // patch_size, p=patch_size, q=patch_size)


def to_model_input(video_uint8: jnp.ndarray) -> jnp.ndarray:
  """uint8 in [0, 255] -> float32 in [-1, 1]."""
  # Centered first: x / 127.5 - 1 gives 1.0000001 for 255 under jit.
  return (video_uint8.astype(jnp.float32) - 127.5) / 127.5


def to_uint8(video: jnp.ndarray) -> jnp.ndarray:
  """float in [-1, 1] -> uint8, clipping out-of-range values (samples overshoot)."""
  return jnp.round(jnp.clip((video + 1.0) * 127.5, 0.0, 255.0)).astype(jnp.uint8)


def is_pixel_config(config) -> bool:
  """Whether the model's tokens are pixel patches (else latent tokens of the frame autoencoder)."""
  p = config.data.patch_size
  return (config.model.tokens_per_frame == (config.data.resolution // p) ** 2
          and config.model.in_channels == p * p * 3)


def tokens_are_pixels(config) -> bool:
  """Whether a run's tokens are config.data's pixel patches: a pixel config without a stage-1
  autoencoder (stage 2's latent tokens may have a pixel config's shapes)."""
  return not config.latents.get("autoencoder_workdir") and is_pixel_config(config)


def video_to_tokens(config, video_uint8: jnp.ndarray) -> jnp.ndarray:
  """uint8 frames [..., F, H, W, 3] -> model tokens [..., F, L, C] of a pixel config."""
  return patchify(to_model_input(video_uint8), config.data.patch_size)


def tokens_to_video(config, tokens: jnp.ndarray) -> jnp.ndarray:
  """Model tokens [..., F, L, C] -> uint8 frames [..., F, H, W, 3] of a pixel config."""
  if not is_pixel_config(config):
    raise ValueError(
        "This config's tokens are latents of a frame autoencoder, not pixel patches: decode"
        " them with generate.tokens_to_video (config.latents.autoencoder_workdir)."
    )
  r = config.data.resolution
  return to_uint8(unpatchify(tokens, config.data.patch_size, r, r))
