"""Stage 2 of the two-stage demo: the demo's DiT on the latents of configs/demo_vae.py (16
tokens x 8 channels per frame), 16-frame clips, FoPP. Set --config.latents.autoencoder_workdir
to the autoencoder's workdir after `--mode=extract_latents` there; `:runlocal` shrinks it.

`:conv`: on the latents of `configs/demo_vae.py:conv` (64 tokens x 4 channels on an 8x8 grid,
in [-1, 1]) with the pixel demo's recipe, window and sampler (configs/demo.py): the same tokens
per clip as the pixel demo's 4x4-pixel patches, 4 channels each instead of 48."""

from configs import common
from configs import demo


def get_config(arg=None):
  args = common.parse_args(arg, allowed=("runlocal", "conv"))
  if "conv" in args:
    c = demo.get_config()
    c.autoencoder.kind = "conv"  # whose latents (runlocal shrinks by it)
    c.model.tokens_per_frame = 64  # an 8x8 grid: the axial RoPE's rows and columns
    c.model.in_channels = 4
    c.sampling.clip_denoised = True  # tanh latents: in [-1, 1] as pixels are
    c.latents.l2_normalize = False  # its decoder reads the latents' norms too
  else:
    c = demo.get_16_frame_config()  # as measured in the README
    c.model.tokens_per_frame = 16  # the autoencoder's latent tokens, not pixel patches
    c.model.in_channels = 8
    c.sampling.clip_denoised = False  # latents are not in [-1, 1]
  c.latents.autoencoder_workdir = None  # required: the demo autoencoder's workdir
  return common.runlocal(c) if "runlocal" in args else c
