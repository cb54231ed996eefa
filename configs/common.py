"""What the config files share: the paper's stage-2 preset and the `runlocal` shrinking."""

from ardiff import default_config


def parse_arg(arg: str | None) -> bool:
  """The config argument (`--config=configs/<name>.py:runlocal`): True for runlocal."""
  if arg in (None, ""):
    return False
  if arg == "runlocal":
    return True
  raise ValueError(f"Unknown config argument {arg!r}: the only one is 'runlocal'.")


def runlocal(c):
  """Shrinks any config to a run of a minute or so on a laptop CPU, in place; returns it.

  The model (2 layers of width 32), the clips (4 frames), the frames of pixel configs (16x16 in
  4x4 patches; latent configs keep their tokens), the batch, the steps and the sampling and
  evaluation sizes. The tests train exactly this (tests/conftest.py).
  """
  window = c.model.num_frames
  c.num_frames = 4  # the model's window follows (a FieldReference)
  c.global_batch_size = 8
  c.num_train_steps = 10
  c.log_every_steps = 5
  c.checkpoint_every_steps = 5
  c.sample_every_steps = 0
  c.eval_every_steps = 0
  c.optimizer.warmup_steps = 0
  pixels = c.model.tokens_per_frame == (c.data.resolution // c.data.patch_size) ** 2
  if pixels:  # tokens and channels follow the FieldReferences of default_config
    c.data.resolution = 16
    c.data.patch_size = 4
  c.model.hidden_size = 32
  c.model.depth = 2
  c.model.num_heads = 2
  c.model.mlp_ratio = 2.0
  c.model.num_context_tokens = 2
  c.sampling.num_steps = 4
  c.sampling.ar_step = 1
  if c.sampling.num_frames:  # keep long-video sampling long relative to the window
    c.sampling.num_frames = c.sampling.num_frames * c.num_frames // window
  c.sampling.num_videos = c.sampling.batch_size = 2
  c.eval.num_videos = c.eval.batch_size = c.eval.num_videos_during_training = 4
  return c


def get_paper_config(dataset: str, learning_rate: float, grad_clip: float, num_classes: int = 0):
  """The paper's stage-2 setup (../shared/PAPER.md): DiT 1152 x 28, 16 heads, on 16 frames of
  32 latent tokens x 4 channels from the frame autoencoder, FoPP, x0, linear betas, T = 1000,
  AdamW, EMA 0.9999, global batch 96, 100k steps, DDIM 50 steps."""
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
