"""Every knob of ardiff with its default; the files in configs/ start from here (the paper's
preset and the runlocal shrinking are in configs/common.py).

Fields that must agree (frames of the data and of the model; tokens and channels of pixel
patches) are tied with ml_collections.FieldReference, so that one command-line override such as
`--config.num_frames=8` or `--config.data.resolution=64` keeps them consistent.
"""

import ml_collections as mc


def get_default_config() -> mc.ConfigDict:
  c = mc.ConfigDict()
  c.seed = 0

  # Clip length seen in training; the model's window (model.num_frames) follows it.
  num_frames = mc.FieldReference(16)
  c.num_frames = num_frames
  c.global_batch_size = 96
  c.num_train_steps = 100_000
  c.log_every_steps = 100
  c.checkpoint_every_steps = 5_000
  c.keep_checkpoints = 3
  c.sample_every_steps = 10_000
  c.eval_every_steps = 0  # 0: no evaluation during training.

  # Training timestep sampler: fopp | autoregressive | diffusion_forcing | full_sequence.
  c.train_timesteps = "fopp"
  # Probability of replacing the class label by the null label (classifier-free guidance).
  c.label_drop = 0.1

  c.diffusion = mc.ConfigDict()
  c.diffusion.num_timesteps = 1000
  c.diffusion.beta_schedule = "linear"  # linear (LDM, the paper's) | cosine
  c.diffusion.parameterization = "x0"  # x0 (the paper's) | eps | v
  c.diffusion.loss_weighting = "none"  # none | min_snr (Min-SNR-gamma, gamma 5)

  c.optimizer = mc.ConfigDict()
  c.optimizer.learning_rate = 2e-4
  c.optimizer.warmup_steps = 0
  c.optimizer.b1 = 0.9
  c.optimizer.b2 = 0.999
  c.optimizer.eps = 1e-8
  c.optimizer.weight_decay = 1e-4
  c.optimizer.grad_clip = 1.0
  c.optimizer.ema_decay = 0.9999  # with the warm-up min(decay, (1 + n) / (10 + n))

  # Pixel patches: frames of resolution x resolution cut into patch_size x patch_size patches.
  # Latent configs (autoencoder tokens) set model.tokens_per_frame / in_channels directly.
  resolution = mc.FieldReference(32)
  patch_size = mc.FieldReference(4)

  c.data = mc.ConfigDict()
  c.data.name = "moving_digits"
  c.data.data_dir = mc.config_dict.placeholder(str)  # None: $TFDS_DATA_DIR or ~/tensorflow_datasets.
  c.data.resolution = resolution
  c.data.patch_size = patch_size
  c.data.frame_stride = 1
  c.data.worker_count = 0
  c.data.prefetch_buffer_size = 2

  c.model = mc.ConfigDict()
  c.model.num_frames = num_frames
  c.model.tokens_per_frame = (resolution // patch_size) * (resolution // patch_size)
  c.model.in_channels = patch_size * patch_size * 3
  c.model.hidden_size = 1152
  c.model.depth = 28
  c.model.num_heads = 16
  c.model.mlp_ratio = 4.0
  c.model.num_classes = 0  # 0: unconditional (learned context tokens); else labels + null label.
  c.model.num_context_tokens = 1
  # The reference's leaky attention (context tokens see every frame). Off: strictly causal.
  c.model.context_attends_video = False
  c.model.dtype = "float32"  # compute dtype; bfloat16 on accelerators
  c.model.param_dtype = "float32"
  c.model.rope_theta = 10_000.0
  c.model.remat = False

  c.mesh = mc.ConfigDict()
  # One size may be -1: it takes the devices that are left.
  c.mesh.shape = (-1, 1, 1)
  c.mesh.axes = ("data", "fsdp", "tensor")
  # Logical axis name -> mesh axes. Batch over data and fsdp; weights over fsdp and tensor.
  c.mesh.logical_axis_rules = (
      ("batch", ("data", "fsdp")),
      ("frames", None),
      ("tokens", None),
      ("embed", "fsdp"),
      ("act_embed", None),
      ("heads", "tensor"),
      ("kv", None),
      ("mlp", "tensor"),
      ("channels", None),
      ("cond", None),
      ("classes", None),
  )

  c.sampling = mc.ConfigDict()
  c.sampling.num_steps = 50
  c.sampling.ar_step = 5
  # Frames to generate; None: the trained length. (Not tied to num_frames by a FieldReference:
  # setting it would then change the training clip length too.)
  c.sampling.num_frames = mc.config_dict.placeholder(int)
  c.sampling.eta = 0.0
  # Finished frames kept in view when a long video slides its window (None: the default of
  # timesteps.default_context_frames).
  c.sampling.context_frames = mc.config_dict.placeholder(int)
  # Clip x0 estimates to [-1, 1] (pixel space); latent configs turn it off.
  c.sampling.clip_denoised = True
  c.sampling.guidance_scale = 1.0
  c.sampling.kv_cache = True
  c.sampling.use_ema = True
  c.sampling.num_videos = 8
  c.sampling.batch_size = 8
  c.sampling.seed = 0
  c.sampling.label = -1  # class-conditional: -1 draws labels at random.
  # Video prediction: the first prefix_frames frames of real clips from prefix_split are given.
  c.sampling.prefix_frames = 0
  c.sampling.prefix_split = "test"

  c.eval = mc.ConfigDict()
  c.eval.num_videos = 2048
  c.eval.batch_size = 16
  c.eval.split = "train"  # real clips from the training split, as in the paper's FVD
  # Dataset of the real clips (None: data.name). Videos longer than data.name's stored clips need
  # one with longer clips of the same videos, e.g. moving_digits_long (128 frames).
  c.eval.data_name = mc.config_dict.placeholder(str)
  # Where the I3D features of real clips are kept between evaluations (None: a folder
  # fvd_real_features in the data dir); keyed by dataset, split, frames, resolution, count, seed.
  c.eval.cache_dir = mc.config_dict.placeholder(str)
  c.eval.seed = 0
  c.eval.num_videos_during_training = 64  # the small evaluation every eval_every_steps
  return c
