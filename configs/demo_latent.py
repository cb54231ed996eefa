"""Stage 2 of the two-stage demo: the demo's DiT on the latents of configs/demo_vae.py (16
tokens x 8 channels per frame), 16-frame clips, FoPP. Set --config.latents.autoencoder_workdir
to the autoencoder's workdir after `--mode=extract_latents` there; `:runlocal` shrinks it.

`:conv`: on the latents of `configs/demo_vae.py:conv` (an 8x8 grid of 4 channels in [-1, 1],
read as 16 tokens of 2x2 cells, 16 channels each) with the pixel demo's recipe, window and
sampler (configs/demo.py, without its pixel convolutions), times 4 (latents.scale: their spread is
about 0.2), 4000 steps: FVD48 690 against 359 for the pixel demo without its convolutions and
197 with them (docs/demo.md, runs LB and CV)."""

from configs import common
from configs import demo


def get_config(arg=None):
  args = common.parse_args(arg, allowed=("runlocal", "conv"))
  if "conv" in args:
    c = demo.get_32_pixel_config()  # 32x32 frames, as runs LA and LB measured
    # Whose latents (runlocal shrinks by them): configs/demo_vae.py:conv's.
    c.autoencoder.kind, c.autoencoder.latent_patch_size = "conv", 2
    c.model.tokens_per_frame = 16  # 4x4 patches of 2x2 cells: the axial RoPE's rows, columns
    c.model.in_channels = 16
    # The pixel demo's convolutions read pixels; latent tokens have none (run LB had none).
    c.model.conv_stem_channels = c.model.conv_head_channels = 0
    c.num_train_steps = 4000  # 4x fewer tokens than the pixel demo: about 3x its steps/s
    c.latents.l2_normalize = False  # its decoder reads the latents' norms too
    c.latents.scale = 4.0  # tanh latents spread about 0.2: times 4 (run LB; 1: run LA, worse)
    # clip_denoised stays on: x0 clipped to [-4, 4], the scaled tanh range (FVD48 690.9; off,
    # as run LB was first sampled: 689.9).
  else:
    c = demo.get_16_frame_config()  # as measured in the README
    c.model.tokens_per_frame = 16  # the autoencoder's latent tokens, not pixel patches
    c.model.in_channels = 8
    c.sampling.clip_denoised = False  # latents are not in [-1, 1]
  c.latents.autoencoder_workdir = None  # required: the demo autoencoder's workdir
  return common.runlocal(c) if "runlocal" in args else c
