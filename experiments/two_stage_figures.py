r"""The README's pictures of the two-stage demo: the autoencoder's reconstructions of held-out
clips next to the clips, and the stage-2 samples decoded to frames.

  python -m experiments.two_stage_figures --vae_workdir=/tmp/ardiff_vae \
      --latent_workdir=/tmp/ardiff_latent [--out=docs]

Writes <out>/two_stage_reconstructions.png (rows: a test clip, then its reconstruction; 8
evenly spaced frames) and copies the latest --mode=sample grid to <out>/two_stage_samples.png
and .gif.
"""

import os
import shutil

from absl import app
from absl import flags
import imageio.v3 as iio
import numpy as np

from ardiff import autoencoder_state
from ardiff import video_io
from ardiff.data import pipeline

_VAE = flags.DEFINE_string("vae_workdir", None, "The stage-1 run.", required=True)
_LATENT = flags.DEFINE_string("latent_workdir", None, "The stage-2 run, sampled already.")
_OUT = flags.DEFINE_string("out", "docs", "Where the pictures go.")
_CLIPS = flags.DEFINE_integer("clips", 4, "Test clips shown.")


def reconstructions(workdir: str, num_clips: int) -> np.ndarray:
  """Rows of 8 frames: each held-out clip above its reconstruction, uint8 [H', W', 3]."""
  _, c, _ = autoencoder_state.load_params(workdir)
  c.num_frames, c.latents.autoencoder_workdir = 16, None
  clips, _ = pipeline.load_clips(c, "test", num_clips, seed=0)
  rec = autoencoder_state.reconstruct(workdir, clips)
  interleaved = np.stack([clips, rec], axis=1).reshape((-1,) + clips.shape[1:])
  return video_io.upscale(video_io.frame_strip(interleaved, 8)[0], 3)


def main(argv):
  del argv
  os.makedirs(_OUT.value, exist_ok=True)
  path = os.path.join(_OUT.value, "two_stage_reconstructions.png")
  iio.imwrite(path, reconstructions(_VAE.value, _CLIPS.value))
  print(f"Wrote {path}")
  if _LATENT.value:
    samples = os.path.join(_LATENT.value, "samples")
    for name, ext in (("grid", "png"), ("grid", "gif")):
      target = os.path.join(_OUT.value, f"two_stage_samples.{ext}")
      shutil.copyfile(os.path.join(samples, f"{name}.{ext}"), target)
      print(f"Wrote {target}")


if __name__ == "__main__":
  app.run(main)
