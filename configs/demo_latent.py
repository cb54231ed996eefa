"""Stage 2 of the two-stage demo: the demo's DiT on the latents of configs/demo_vae.py (16
tokens x 8 channels per frame), 16-frame clips, FoPP. Set --config.latents.autoencoder_workdir
to the autoencoder's workdir after `--mode=extract_latents` there; `:runlocal` shrinks it."""

from configs import common
from configs import demo


def get_config(arg=None):
  runlocal = common.parse_arg(arg)
  c = demo.get_16_frame_config()  # as measured in the README
  c.model.tokens_per_frame = 16  # the autoencoder's latent tokens, not pixel patches
  c.model.in_channels = 8
  c.sampling.clip_denoised = False  # latents are not in [-1, 1]
  c.latents.autoencoder_workdir = None  # required: the demo autoencoder's workdir
  return common.runlocal(c) if runlocal else c
