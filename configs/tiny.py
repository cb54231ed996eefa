"""A model and data small enough for the tests: 4 frames of 16x16 pixels, 2 layers."""

from ardiff import default_config


def get_config():
  c = default_config.get_default_config()
  c.num_frames = 4
  c.global_batch_size = 8
  c.num_train_steps = 10
  c.log_every_steps = 5
  c.checkpoint_every_steps = 5
  c.sample_every_steps = 0
  c.optimizer.learning_rate = 1e-3

  c.data.name = "moving_digits"
  c.data.resolution = 16
  c.data.patch_size = 4

  c.model.hidden_size = 32
  c.model.depth = 2
  c.model.num_heads = 2
  c.model.mlp_ratio = 2.0
  c.model.num_context_tokens = 2

  c.sampling.num_steps = 4
  c.sampling.ar_step = 1
  c.sampling.num_videos = 2
  c.sampling.batch_size = 2
  c.eval.num_videos = 4
  c.eval.batch_size = 4
  return c
