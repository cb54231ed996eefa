"""Host-side (numpy + PIL) frame resizing, shared by the builders and the grain pipeline."""

import numpy as np
from PIL import Image


def center_crop_square(frame: np.ndarray) -> np.ndarray:
  """[H, W, C] -> [S, S, C] with S = min(H, W), cut from the middle."""
  h, w = frame.shape[:2]
  s = min(h, w)
  top, left = (h - s) // 2, (w - s) // 2
  return frame[top:top + s, left:left + s]


def resize_frames(frames: np.ndarray, size: int) -> np.ndarray:
  """Resizes uint8 frames [..., H, W, 3] to [..., size, size, 3].

  Shrinking uses PIL's BOX filter, i.e. area averaging (for an integer factor it is the exact
  mean of each block), which does not alias the way bilinear sampling does; enlarging uses
  bilinear interpolation.
  """
  h, w = frames.shape[-3:-1]
  if (h, w) == (size, size):
    return frames
  resample = Image.Resampling.BOX if size <= min(h, w) else Image.Resampling.BILINEAR
  flat = frames.reshape((-1, h, w, frames.shape[-1]))
  out = np.stack([
      np.asarray(Image.fromarray(f).resize((size, size), resample=resample)) for f in flat
  ])
  return out.reshape(frames.shape[:-3] + (size, size, frames.shape[-1]))


def grayscale(frames: np.ndarray) -> np.ndarray:
  """uint8 frames [..., 3] -> white on black: each pixel's brightest channel in all three
  (config.data.grayscale)."""
  return np.repeat(frames.max(axis=-1, keepdims=True), 3, axis=-1)
