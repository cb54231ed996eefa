r"""Stage 1 of the two-stage demo: a small frame autoencoder for the embedded moving digits, 32x32
frames -> 16 latent tokens x 8 channels, trained on 2 CPU cores in about a quarter of an hour.

  python -m ardiff.main --config=configs/demo_vae.py --workdir=/tmp/ardiff_vae
  python -m ardiff.main --config=configs/demo_vae.py --workdir=/tmp/ardiff_vae \
      --mode=extract_latents
  python -m ardiff.main --config=configs/demo_latent.py --workdir=/tmp/ardiff_latent \
      --config.latents.autoencoder_workdir=/tmp/ardiff_vae

`:temporal` fine-tunes its temporal decoder (--config.autoencoder.init_from=/tmp/ardiff_vae);
`:conv` is the convolutional autoencoder instead of the paper's tokenizer (white digits, an 8x8
grid of 4-channel latents in [-1, 1], read as 16 tokens of 2x2 cells x 16 channels; stage 2:
configs/demo_latent.py:conv);
`:runlocal` shrinks any of them to a minute.
"""

from ardiff import default_config
from configs import common


def get_config(arg=None):
  args = common.parse_args(arg, allowed=("runlocal", "temporal", "conv"))
  c = default_config.get_default_config()
  c.trainer = "autoencoder"
  c.num_frames = 1
  c.global_batch_size = 32  # frames
  c.num_train_steps = 2500
  c.log_every_steps = 50
  c.checkpoint_every_steps = 500
  c.sample_every_steps = 500
  c.optimizer.learning_rate = 1e-3
  c.optimizer.warmup_steps = 100

  c.data.name = "moving_digits"
  c.data.resolution = 32  # the pixel demo's frames

  ae = c.autoencoder
  ae.patch_size = 4  # an 8x8 grid; the pixel decoder's 3 levels upsample it 4x
  ae.channel_mult = (1, 2, 2)
  ae.num_res_blocks = 1
  ae.width = 128
  ae.encoder_depth = ae.decoder_depth = 2
  ae.num_heads = 4
  ae.num_latent_tokens = 16
  ae.token_channels = 8
  ae.pixel_vocab = 256
  ae.z_channels = 64
  ae.pixel_hidden_channels = 32
  ae.norm_groups = 8
  # AlexNet's LPIPS: at 32x32, VGG16's costs 100x more FLOPs than the autoencoder itself (6x
  # slower steps on a 2-core CPU); the paper's configs keep VGG16.
  ae.loss.lpips_net = "alexnet"
  if "conv" in args:
    c.data.grayscale = True  # the pixel demo's white digits
    ae.kind = "conv"
    ae.use_l2_norm = False  # its latents are bounded by tanh instead
    # 32x32 -> an 8x8 grid of 4 channels: test PSNR 28.4 dB after 1000 steps; a 4x4 grid of 16
    # (8x smaller frames) 20.4 dB, its digits' shapes lost (docs/demo.md). Read in 2x2 patches
    # of cells: 16 tokens of 16 channels per frame, a quarter of stage 2's tokens.
    ae.channel_mult = (1, 2, 2)
    ae.latent_patch_size = 2
    ae.num_latent_tokens, ae.token_channels = 16, 16
    ae.pixel_hidden_channels = 32
    c.num_train_steps = 1000
  if "temporal" in args:
    common.temporal_finetune(c)
    c.global_batch_size = 8
    c.num_train_steps = 1000
    c.optimizer.learning_rate = 1e-4  # the paper's 1e-6 is for a model 500k steps in
  return common.runlocal(c) if "runlocal" in args else c
