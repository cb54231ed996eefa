"""Writing videos: animated GIF and mp4 files, GIF bytes for TensorBoard, and grids."""

import io

import imageio.v3 as iio
import numpy as np


def grid(videos: np.ndarray, columns: int | None = None, pad: int = 1) -> np.ndarray:
  """uint8 [N, F, H, W, 3] -> one video [F, rows * (H + pad), columns * (W + pad), 3]."""
  n, f, h, w, c = videos.shape
  columns = columns or int(np.ceil(np.sqrt(n)))
  rows = int(np.ceil(n / columns))
  out = np.full((f, rows * (h + pad), columns * (w + pad), c), 255, np.uint8)
  for i in range(n):
    r, col = divmod(i, columns)
    out[:, r * (h + pad):r * (h + pad) + h, col * (w + pad):col * (w + pad) + w] = videos[i]
  return out


def frame_strip(videos: np.ndarray, columns: int) -> tuple[np.ndarray, np.ndarray]:
  """uint8 [N, F, H, W, 3] -> a still picture [N * H, columns * W, 3], one row per video of
  `columns` evenly spaced frames, and the indices of those frames."""
  cols = np.linspace(0, videos.shape[1] - 1, columns).round().astype(int)
  return np.concatenate([np.concatenate(list(v[cols]), axis=1) for v in videos], axis=0), cols


def upscale(video: np.ndarray, factor: int) -> np.ndarray:
  """Nearest-neighbour enlargement of [..., H, W, 3] (small frames are hard to see)."""
  if factor <= 1:
    return video
  return np.repeat(np.repeat(video, factor, axis=-3), factor, axis=-2)


def gif_bytes(frames: np.ndarray, fps: float = 8.0) -> bytes:
  """uint8 [F, H, W, 3] -> an animated GIF that loops."""
  buf = io.BytesIO()
  iio.imwrite(buf, frames, extension=".gif", duration=1000.0 / fps, loop=0)
  return buf.getvalue()


def write_gif(path: str, frames: np.ndarray, fps: float = 8.0):
  with open(path, "wb") as f:
    f.write(gif_bytes(frames, fps))


def write_mp4(path: str, frames: np.ndarray, fps: float = 8.0):
  """H.264 mp4 (ffmpeg from imageio-ffmpeg), yuv420p so that every player opens it."""
  # yuv420p needs even sizes: pad odd ones by repeating the last row / column.
  h, w = frames.shape[1:3]
  frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
  iio.imwrite(path, frames, extension=".mp4", fps=fps, codec="libx264", macro_block_size=1,
              plugin="FFMPEG")
