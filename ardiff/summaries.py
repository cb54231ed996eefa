"""TensorBoard summaries through clu: averaged scalars, per-frame losses, and videos as GIFs.

clu's write_videos only logs "not supported", so videos go in as image summaries whose
encoded bytes are an animated GIF (TensorBoard's image dashboard shows them animated).
"""

import numpy as np
from tensorboard.plugins.image import metadata as image_metadata

from ardiff import video_io


def scalars_from_metrics(history: list[dict]) -> dict:
  """Mean over the steps since the last report; vector metrics become one scalar per entry."""
  out = {}
  for key in history[0]:
    value = np.mean(np.stack([np.asarray(h[key], np.float64) for h in history]), axis=0)
    if np.ndim(value) == 0:
      out[key] = float(value)
    else:  # e.g. loss_by_frame [F]
      for i, v in enumerate(np.ravel(value)):
        out[f"{key}/{i:03d}"] = float(v)
  return out


def write_video(writer, step: int, tag: str, videos: np.ndarray, fps: float = 8.0, scale: int = 1):
  """Writes uint8 [N, F, H, W, 3] as one animated GIF (a grid of the N videos)."""
  frames = video_io.upscale(video_io.grid(videos), scale)
  gif = video_io.gif_bytes(frames, fps)
  h, w = frames.shape[1:3]
  tensor = np.array([str(w).encode(), str(h).encode(), gif], dtype=object)
  md = image_metadata.create_summary_metadata(display_name=tag, description="animated GIF",
                                              converted_to_tensor=True)
  writer.write_summaries(step, {tag: tensor}, metadata={tag: md})
