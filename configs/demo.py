"""The embedded demo: moving digits (built from scikit-learn's digits, Moving MNIST's proportions,
each class drawn with one shape, two digits bouncing off each other) as white digits on 16x16
frames, a causal DiT of three layers over 4x4-pixel patches with pixel convolutions around it,
trained with FoPP on 4-frame clips and a loss weighed towards bright pixels, for 56000 steps (run
D3's recipe, run AP's with a layer fewer; README for its time; `:runlocal`: a minute). `:typeface`
is AP's four layers on digits that cross (run TF16X2, the demo before AP), `:handwriting` on the
handwritten digits for half the steps (run FG4, the one before it). The 32x32 recipe before them
(run CV, an hour) is `get_32_pixel_config()`. docs/demo.md measures every choice here.
"""

from ardiff import default_config
from configs import common


def get_config(arg=None):
  """`:runlocal`: the one-minute smoke run; `:typeface`: run TF16X2 (the demo before, on
  crossing digits); `:handwriting`: run FG4 (below)."""
  args = common.parse_args(arg, ("runlocal", "handwriting", "typeface"))
  if {"handwriting", "typeface"} <= args:
    raise ValueError("configs/demo.py: choose one of :handwriting and :typeface.")
  c = _config()
  if "handwriting" not in args:
    # Run TF16X2 (docs/demo.md, "One shape per class"): FG4's clips (same motion, classes and
    # positions) with each class drawn as its medoid, for twice the steps. FG4 keeps a video's
    # digits in 0.20 of its frames (real 0.87): each frame redraws a digit's details, and on
    # 1500 shapes the redraws wander off the digit; with ten shapes TF16X2 keeps them in 0.53
    # over 48 frames at FVD48 3.75x the floor, where 28000 steps keep them in 0.30 (run TF16).
    if "typeface" in args:
      c.data.name = "moving_digits_typeface"
      c.eval.data_name = "moving_digits_typeface_long"
    else:
      # Run AP: the same clips with two digits bouncing off each other instead of crossing,
      # where a 4-frame window cannot follow a digit hidden behind another (docs/demo.md,
      # "Digits that bounce off each other"): FVD48 2.8x and 2.9x the floor for two seeds and
      # 2.4x for the README's run, digits kept in 0.72-0.78 of 48 frames, against 3.2x-4.2x and
      # 0.50-0.60 for four draws on crossing digits.
      c.data.name = "moving_digits_typeface_apart"
      c.eval.data_name = "moving_digits_typeface_apart_long"
      # Three layers instead of four (run D3, docs/demo.md "Three layers as the demo"): inside the
      # half hour on this project's 2-core VM at the moments measured (README), where four took
      # 30.8-36.3 minutes. Over three draws each, four: FVD48 2.4-2.9x the floor, digits legible
      # in 0.85-0.87 of 48 frames, 10-19 of 128 videos fading; three: 2.6-2.9x, 0.82-0.84, 8, 13
      # and 28.
      # `--config.model.depth=4` trains run AP's recipe (scan_unroll 4 covers both).
      c.model.depth = 3
    c.num_train_steps = 56000
    c.sample_every_steps = 28000
    # The sampled noise a little narrowed at ar_step 3 (run TF16X2): FVD48 93.1 against 96.4 at 1,
    # kept 0.55 against 0.53; 0.75 keeps 0.61 but costs FVD48 (108.4: 4.2x the floor). Frame by
    # frame (FVD48 does not score it) at half its scale: kept 0.71 of 128 frames against 0.55 at 1.
    c.sampling.noise_temperature = 0.9
    c.sampling.frame_by_frame_noise_temperature = 0.5
    # Frame by frame: no history guidance, and the model's own frames fed at t = 300 as if not
    # clean. On 96 rollouts of 128 frames of two training seeds 2 and 4 go black, 18 and 19 keep
    # less than 0.6 of their mass, and digits are legible in 0.87 and 0.78 of the frames; at
    # t = 100 0 and 6 go black, 22 and 34 keep less than 0.6 (legible 0.84, 0.77); at guidance
    # 1.25 with clean frames 7 and 45 go black, 24 and 62 keep less than 0.6, and 0.79 and 0.57
    # are legible (docs/demo.md, "Frame by frame without history guidance").
    c.sampling.frame_by_frame_history_guidance_scale = 1.0
    c.sampling.frame_by_frame_finished_timestep = 300
  return common.runlocal(c) if "runlocal" in args else c


def _config():
  """Run FG4's recipe (`:handwriting`), which the default changes in its data, steps and
  sampling temperatures."""
  c = default_config.get_default_config()
  # A 4-frame window: 16 frames would cost 16x the attention (chosen at 32x32, 64 tokens a frame).
  c.num_frames = 4
  # Batches of 4 for 28000 steps: 20 minutes on a 2-core VM at 193-195 GFLOP/s, 10-12 on one at
  # 440 (runs B4, B4S1, FG4; README). Without the loss weight below: FVD48 5.4x the floor for two
  # seeds (B4, B4S1), as batches of 8 for 16000 steps in 26 minutes (run X16B8) but with objects
  # that hold better frame by frame; 38000 steps fade (run B4L: 7.5x); 9000 steps of 16 in 28
  # minutes: 7.0x (run X16L).
  c.global_batch_size = 4
  c.num_train_steps = 28000
  c.log_every_steps = 50
  # A save costs about half a second on a 2-core VM (56 of them: 28 s of the default's run); a
  # crash loses at most the 4000 steps since the last (2-3 minutes).
  c.checkpoint_every_steps = 4000
  c.sample_every_steps = 14000
  c.optimizer.learning_rate = 1e-3
  c.optimizer.warmup_steps = 100
  c.optimizer.schedule = "cosine"  # decays to 0 at the last step
  c.optimizer.ema_decay = 0.999
  # Each pixel's error weighed by 1 + 0.5 x its clean brightness, so that an unsure fit leans
  # bright rather than dim: FVD48 90.2, 106.9 and 76.1 for three seeds (3.2x, 3.8x and 2.7x the
  # floor) against 153.7 and 153.0 with the plain MSE (runs FG4, FG4S1, FG4S2 against B4, B4S1
  # in docs/demo.md). On the apart digits 0.6 fades as 0.5 over three draws (runs FW6, FW6S1,
  # FW6S2).
  c.diffusion.foreground_weight = 0.5
  # A quarter of the clips have clean frames before FoPP's pivot (with axial RoPE: FVD48 541
  # against 695 without both, docs/demo.md runs P4 and P4b).
  c.fopp_clean_prefix_prob = 0.25

  # 28-pixel digits on 64x64 frames, 7 pixels at 16x16: legible there, where moving_digits'
  # 20-pixel ones (5 pixels) are not.
  c.data.name = "moving_digits_large"
  c.data.grayscale = True  # white digits, as every run since H in docs/demo.md
  # The 2000 training clips decoded and resized once, into memory (49 MB, 5.6 s): the batches are
  # the same, the loop runs 27.5-28.0 steps/s median against 23.6-24.3 decoding each batch (4000
  # steps alone, in turn, on a 2-core VM at 158-181 GFLOP/s; BENCHMARKS.md).
  c.data.in_memory = True
  # 16 tokens of 48 channels per frame: a step is about a quarter of the 32x32 one's, and FVD48
  # falls fast with steps (docs/demo.md, "16x16 frames").
  c.data.resolution = 16
  c.data.patch_size = 4

  c.model.hidden_size = 128
  # Four layers here; the default (apart digits) sets three, above. For 60000 steps three layers
  # score as at 56000 (run D3L, 27.3 minutes at a slower moment of the VM: legible in 0.81).
  c.model.depth = 4
  c.model.num_heads = 4
  # Ratio 2 on the apart digits (runs M2A, M2AT, M2AS1): a step 1.14 times as fast, but digits
  # legible in 0.74-0.84 of 48 frames against 0.85-0.87, three draws each; with the 16-channel head
  # as well it fades (M2HA; docs/demo.md).
  c.model.mlp_ratio = 4.0
  c.model.rope_axes = "frame_row_col"  # the patch's row and column in every attention score
  # 3x3 convolutions over the pixels around the transformer (run CV in docs/demo.md): FVD48 197
  # against 359 without, for a fifth more time per step.
  c.model.conv_stem_channels = 16
  c.model.conv_head_channels = 32
  # No loop over the 3 or 4 layers: 5 % more train steps per second on CPUs (BENCHMARKS.md).
  c.model.scan_unroll = 4

  c.sampling.num_steps = 25
  c.sampling.ar_step = 3
  c.sampling.eta = 1.0  # stochastic DDIM: FVD48 431 against 541 deterministic (docs/demo.md)
  # History guidance against the frames in progress alone ("vanilla"): FVD48 359 against 431
  # without, and objects that hold for 48 frames (persistence 0.96; "fractional": 0.53).
  # Samples without KV cache (docs/demo.md).
  c.sampling.history_guidance_scale = 1.5
  c.sampling.history_guidance_mode = "vanilla"
  # Frame by frame on run P4 (32x32) 1.5 made the objects grow (128 frames: 2.06) and 1.25 held
  # them (1.02); on X16B8 (16x16, plain MSE) no scale from 1.0 to 2.5 kept them digits; on FG4
  # the mass holds at 1.25 (1.10), some rollouts clutter (docs/demo.md).
  c.sampling.frame_by_frame_history_guidance_scale = 1.25
  c.sampling.num_frames = 48  # twelve times the trained window
  c.sampling.num_videos = 8
  c.sampling.batch_size = 8
  c.eval.num_videos = 128
  # FVD on the 48-frame samples needs 48-frame real clips: moving_digits_large stores 32.
  c.eval.data_name = "moving_digits_large_long"
  c.eval.batch_size = 16
  return c


def get_32_pixel_config():
  """The demo until the 16x16 runs (run CV): moving_digits' 20-pixel digits on 32x32 frames (64
  tokens per frame), batches of 16 for 5000 steps: an hour on a 2-core VM at 201 GFLOP/s,
  FVD48 6.0x the floor (docs/demo_quality_cv.json)."""
  c = get_config("handwriting")
  c.global_batch_size, c.num_train_steps = 16, 5000
  c.checkpoint_every_steps, c.sample_every_steps = 500, 1000
  c.data.name, c.data.resolution = "moving_digits", 32
  c.eval.data_name = "moving_digits_long"
  c.diffusion.foreground_weight = 0.0  # the plain MSE that CV was measured with
  return c


def get_16_frame_config():
  """The demo config with its earlier settings: 16 colour frames of 8x8-pixel patches, RoPE over
  the frame index, no pixel convolutions, the paper's FoPP, a constant learning rate,
  deterministic DDIM without history guidance. The sampler comparison (docs/results.md), the
  two-stage demo and the benchmarks' "demo" rows were measured with them."""
  c = get_32_pixel_config()
  c.num_frames = 16
  c.num_train_steps = 4000
  c.sample_every_steps = 500
  c.data.grayscale, c.data.patch_size = False, 8
  c.model.rope_axes = "frame"
  c.model.conv_stem_channels = c.model.conv_head_channels = 0
  c.model.scan_unroll = 1
  c.optimizer.schedule = "constant"
  c.fopp_clean_prefix_prob = 0.0
  c.sampling.eta = 0.0
  c.sampling.history_guidance_scale = 1.0
  c.sampling.history_guidance_mode = "fractional"
  c.sampling.frame_by_frame_history_guidance_scale = None
  return c
