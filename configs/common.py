"""What the config files share: the paper's presets (stage 1 and stage 2) and the `runlocal`
shrinking."""

from ardiff import default_config


def parse_args(arg: str | None, allowed=("runlocal",)) -> set[str]:
  """The config argument after the file (`--config=configs/<name>.py:runlocal`, or several
  separated by commas, e.g. `:temporal,runlocal`) as a set of names."""
  names = {a for a in (arg or "").split(",") if a}
  unknown = names - set(allowed)
  if unknown:
    raise ValueError(f"Unknown config argument(s) {sorted(unknown)}: this config takes"
                     f" {list(allowed)}.")
  return names


def parse_arg(arg: str | None) -> bool:
  """True for runlocal (the one argument most configs take)."""
  return "runlocal" in parse_args(arg)


def runlocal(c):
  """Shrinks any config to a run of a minute or so on a laptop CPU, in place; returns it.

  The models (2 layers of width 32; a small autoencoder), the clips (4 frames; the per-frame
  autoencoder keeps its single frames), the frames of pixel and autoencoder configs (16x16;
  latent configs keep their tokens), the batch, the steps and the sampling and evaluation
  sizes. The tests train exactly this (tests/conftest.py).
  """
  window = c.model.num_frames
  if c.trainer != "autoencoder" or c.num_frames > 1:
    c.num_frames = 4  # the model's window follows (a FieldReference)
  c.global_batch_size = 8
  c.num_train_steps = 10
  c.log_every_steps = 5
  c.checkpoint_every_steps = 5
  c.sample_every_steps = 0
  c.eval_every_steps = 0
  c.optimizer.warmup_steps = 0
  p = c.data.patch_size
  pixels = (c.model.tokens_per_frame == (c.data.resolution // p) ** 2
            and c.model.in_channels == p * p * 3)
  c.data.resolution = 16  # pixel configs' tokens follow (FieldReferences of default_config)
  c.data.patch_size = 4
  conv = c.autoencoder.get("kind", "titok") == "conv"
  # A runlocal autoencoder's tokens: the conv kind's 4x4 grid (16x16 frames halved twice) of 4
  # channels, read in latent_patch_size patches; the tokenizer's 8 tokens of 4.
  cells = c.autoencoder.get("latent_patch_size", 1) ** 2 if conv else 1
  small_tokens = ((16 if conv else 8) // cells, 4 * cells)
  if not pixels and c.trainer != "autoencoder":  # the latents of a runlocal autoencoder
    c.model.tokens_per_frame, c.model.in_channels = small_tokens
  c.model.hidden_size = 32
  c.model.depth = 2
  c.model.num_heads = 2
  c.model.mlp_ratio = 2.0
  c.model.num_context_tokens = 2
  ae = c.autoencoder  # 16x16 frames: a 4x4 grid of 4x4 patches, upsampled 4x by 3 levels
  ae.patch_size, ae.channel_mult, ae.num_res_blocks = 4, (1, 1, 2), 1
  ae.width, ae.encoder_depth, ae.decoder_depth, ae.num_heads = 32, 1, 1, 2
  ae.pixel_vocab, ae.z_channels, ae.pixel_hidden_channels, ae.norm_groups = 64, 32, 32, 8
  if c.trainer == "autoencoder":
    ae.num_latent_tokens, ae.token_channels = small_tokens
  ae.loss.disc_channels, ae.loss.disc_layers = 16, 2
  ae.loss.lpips_net = "vgg16"  # AlexNet's LPIPS needs frames of 32x32 or more
  if ae.loss.gan_start_step > 0:
    ae.loss.gan_start_step = c.num_train_steps // 2
  c.sampling.num_steps = 4
  c.sampling.ar_step = 1
  if c.sampling.num_frames:  # keep long-video sampling long relative to the window
    c.sampling.num_frames = c.sampling.num_frames * c.num_frames // window
  c.sampling.num_videos = c.sampling.batch_size = 2
  c.eval.num_videos = c.eval.batch_size = c.eval.num_videos_during_training = 4
  c.latents.extract_batch_size = 8
  c.latents.shard_size = 16
  return c


def get_paper_config(dataset: str, learning_rate: float, grad_clip: float, num_classes: int = 0):
  """The paper's stage-2 setup (../shared/PAPER.md): DiT 1152 x 28, 16 heads, on 16 frames of
  32 latent tokens x 4 channels from the frame autoencoder, FoPP, x0, linear betas, T = 1000,
  AdamW, EMA 0.9999, global batch 96, 100k steps, DDIM 50 steps. The latents come from
  --config.latents.autoencoder_workdir=<the dataset's stage-1 run> (configs/<dataset>_vae.py)."""
  c = default_config.get_default_config()
  c.num_frames = 16
  c.global_batch_size = 96
  c.num_train_steps = 100_000
  c.train_timesteps = "fopp"
  c.optimizer.learning_rate = learning_rate
  c.optimizer.grad_clip = grad_clip
  c.data.name = dataset
  c.data.resolution = 256
  # Latent tokens of the per-frame ViT tokenizer, not pixel patches.
  c.model.tokens_per_frame = 32
  c.model.in_channels = 4
  c.model.num_classes = num_classes
  c.model.dtype = "bfloat16"
  c.sampling.clip_denoised = False
  c.mesh.shape = (-1, 1, 1)
  c.sampling.num_steps = 50
  c.sampling.ar_step = 5
  return c


def get_paper_vae_config(dataset: str, learning_rate: float, gan_start_step: int):
  """The paper's stage 1 (../shared/AUTOENCODER.md): the frame autoencoder at full size (ViT-L
  encoder and decoder, 16x16 patches of 256x256 frames, 32 tokens x 4 channels, L2-normalised),
  L1 + LPIPS-VGG16, KL weight 0, the PatchGAN from gan_start_step, AdamW (weight decay 1e-4,
  grad clip 1.0) at a constant learning rate, on single frames."""
  c = default_config.get_default_config()
  c.trainer = "autoencoder"
  c.num_frames = 1
  c.global_batch_size = 64  # frames; the reference: 16 per GPU x 2 accumulation steps
  c.num_train_steps = 500_000
  c.checkpoint_every_steps = 5_000
  c.sample_every_steps = 5_000
  c.optimizer.learning_rate = learning_rate
  c.optimizer.grad_clip = 1.0
  c.data.name = dataset
  c.data.resolution = 256
  c.autoencoder.loss.gan_start_step = gan_start_step
  c.autoencoder.dtype = "bfloat16"
  return c


def temporal_finetune(c):
  """The temporal decoder's fine-tuning (the paper's second part of stage 1), in place: causal
  temporal layers before each decoder block, trained alone (encoder and the rest frozen, so the
  latents do not change) on 16-frame clips with L1 + LPIPS, no GAN, lr 1e-6. Set
  --config.autoencoder.init_from=<the per-frame run's workdir>."""
  c.num_frames = 16
  c.global_batch_size = 8  # clips
  c.autoencoder.temporal = True
  c.autoencoder.temporal_window = 16
  c.autoencoder.train_only_temporal = True
  c.autoencoder.loss.gan_start_step = -1
  c.optimizer.learning_rate = 1e-6
  return c


def reference_variant(c):
  """The reference's released stage-2 model and sampler, in place (README, "Using the released
  checkpoints"): its DiT (config.model.variant = "reference", 77 context tokens of width 768),
  its DDIM timesteps and finished frames fed at t = 1, so that a checkpoint converted with
  `python -m ardiff.convert` gives the reference's samples; no KV cache (its leaky mask)."""
  c.model.variant = "reference"
  c.model.reference_context_tokens = 77
  c.model.reference_context_dim = 768
  c.sampling.timestep_grid = "reference"
  c.sampling.finished_timestep = 1
  c.sampling.kv_cache = False
  return c
