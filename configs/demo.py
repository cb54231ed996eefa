"""The embedded demo: moving digits (built from scikit-learn's digits), 16 frames of 32x32,
a small causal DiT trained with FoPP for half an hour on a laptop CPU (`:runlocal`: a minute)."""

from ardiff import default_config
from configs import common


def get_config(arg=None):
  c = default_config.get_default_config()
  c.num_frames = 16
  c.global_batch_size = 16
  c.num_train_steps = 4000  # about 25 minutes at 2.72 steps/s on 2 CPU cores (README)
  c.log_every_steps = 50
  c.checkpoint_every_steps = 500
  c.sample_every_steps = 500
  c.optimizer.learning_rate = 1e-3
  c.optimizer.warmup_steps = 100
  c.optimizer.ema_decay = 0.999

  c.data.name = "moving_digits"
  c.data.resolution = 32
  c.data.patch_size = 8  # 16 tokens of 192 channels per frame

  c.model.hidden_size = 128
  c.model.depth = 4
  c.model.num_heads = 4
  c.model.mlp_ratio = 4.0

  c.sampling.num_steps = 25
  c.sampling.ar_step = 3
  c.sampling.num_frames = 48  # three times the trained window
  c.sampling.num_videos = 8
  c.sampling.batch_size = 8
  c.eval.num_videos = 128
  # FVD on the 48-frame samples needs 48-frame real clips: moving_digits stores 32.
  c.eval.data_name = "moving_digits_long"
  c.eval.batch_size = 16
  return common.runlocal(c) if common.parse_arg(arg) else c
