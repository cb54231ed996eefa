"""Decoding one source video (a video file or a folder of frames) into stored frames.

Preprocessing, as in the paper: the short side is resized to the stored resolution and the
middle square is kept. Both happen in one PIL resize of the centered square box (PIL accepts a
fractional box, so nothing is rounded), with the BOX filter (area averaging: antialiased) when
shrinking and bilinear interpolation when enlarging (UCF-101's 240-pixel frames at 256).
"""

import os
import re

import imageio_ffmpeg
import numpy as np
from PIL import Image

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")
FRAME_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
# A container that announces more frames than this share of them lost data (a cut download).
_MIN_DECODED_SHARE = 0.9


class UnreadableVideoError(ValueError):
  """A source video that cannot be decoded (reported by the build, then skipped)."""


def is_video_file(path: str) -> bool:
  return os.path.isfile(path) and path.lower().endswith(VIDEO_EXTENSIONS)


def frame_files(folder: str) -> list[str]:
  """The image files of a frame folder, in natural order (frame_2 before frame_10)."""
  names = [n for n in os.listdir(folder) if n.lower().endswith(FRAME_EXTENSIONS)]
  return [os.path.join(folder, n) for n in sorted(names, key=_natural_key)]


def read_video(path: str, size: int) -> tuple[np.ndarray, float]:
  """Decodes and preprocesses a video file or a frame folder.

  Returns:
    frames: uint8 [T, size, size, 3], T >= 1.
    fps: frames per second from the file's header; 0.0 for frame folders (unknown).

  Raises:
    UnreadableVideoError: no frame, a frame that does not decode, or a file cut short.
  """
  try:
    if os.path.isdir(path):
      frames, fps = _read_frame_folder(path, size), 0.0
    else:
      frames, fps = _read_video_file(path, size)
  except UnreadableVideoError:
    raise
  except Exception as e:  # pylint: disable=broad-except  (PIL and ffmpeg raise many kinds)
    # ffmpeg's errors carry its whole log: the first line says what went wrong.
    first_line = next((line for line in str(e).splitlines() if line.strip()), "")
    raise UnreadableVideoError(f"{type(e).__name__}: {first_line}") from e
  if not frames:
    raise UnreadableVideoError("no frames")
  return np.stack(frames), fps


def preprocess(image: Image.Image, size: int) -> np.ndarray:
  """The centered square of a frame, resized to [size, size, 3] uint8."""
  image = image.convert("RGB")
  w, h = image.size
  s = min(w, h)
  left, top = (w - s) / 2, (h - s) / 2
  resample = Image.Resampling.BOX if size <= s else Image.Resampling.BILINEAR
  return np.asarray(image.resize((size, size), resample, box=(left, top, left + s, top + s)))


def _read_frame_folder(folder: str, size: int) -> list[np.ndarray]:
  frames = []
  for file in frame_files(folder):
    with Image.open(file) as image:
      image.load()  # decodes the whole file now: a truncated JPEG or PNG raises here
      frames.append(preprocess(image, size))
  return frames


def _read_video_file(path: str, size: int) -> tuple[list[np.ndarray], float]:
  reader = imageio_ffmpeg.read_frames(path, pix_fmt="rgb24")
  try:
    meta = next(reader)
    width, height = meta["size"]
    frames = [
        preprocess(Image.frombuffer("RGB", (width, height), raw, "raw", "RGB", 0, 1), size)
        for raw in reader
    ]
  finally:
    reader.close()
  fps = float(meta.get("fps") or 0.0)
  announced = (meta.get("duration") or 0.0) * fps
  if frames and len(frames) < _MIN_DECODED_SHARE * announced - 1:
    raise UnreadableVideoError(
        f"cut short: decoded {len(frames)} of the {announced:.0f} frames its header announces")
  return frames, fps


def _natural_key(name: str):
  return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]
