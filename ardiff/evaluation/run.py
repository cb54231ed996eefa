"""`--mode=evaluate` and the evaluation during training: generate, compare with real clips, write.

Writes workdir/eval/metrics.json:
  {"fvd": ..., "num_videos": ..., "num_frames": ..., "ar_step": ..., "step": ..., ...}
and TensorBoard scalars eval/fvd.
"""

import json
import os

import jax
import ml_collections
import numpy as np

from ardiff.evaluation import fvd


def real_clips(config, num_videos: int, num_frames: int) -> np.ndarray:
  """num_videos real clips of num_frames frames from config.eval.split (uint8)."""
  from ardiff.data import pipeline  # pylint: disable=g-import-not-at-top

  c = ml_collections.ConfigDict(config.to_dict())  # a copy with its own clip length
  c.num_frames = num_frames
  try:
    clips, _ = pipeline.load_clips(c, config.eval.split, num_videos, seed=config.eval.seed)
  except ValueError as e:
    raise ValueError(
        f"FVD on {num_frames}-frame videos needs real clips of {num_frames} frames from"
        f" {config.data.name}: {e}"
    ) from e
  return clips


def evaluate_params(config, params, *, step=None, num_videos=None, progress=True) -> dict:
  """Generates videos with params, computes FVD against real clips; returns the metrics."""
  from ardiff import generate  # pylint: disable=g-import-not-at-top

  n = num_videos or config.eval.num_videos
  c = ml_collections.ConfigDict(config.to_dict())
  c.sampling.batch_size = config.eval.batch_size
  fake = generate.generate(c, params, n, progress=progress)
  real = real_clips(config, n, fake.shape[1])
  metrics = {
      "fvd": fvd.compute_fvd(real, fake, batch_size=config.eval.batch_size, progress=progress),
      "num_videos": int(n),
      "num_frames": int(fake.shape[1]),
      "ar_step": int(config.sampling.ar_step),
      "num_steps": int(config.sampling.num_steps),
      "step": None if step is None else int(step),
      "dataset": config.data.name,
      "split": config.eval.split,
  }
  return metrics


def write_metrics(workdir: str, metrics: dict, writer=None, name: str = "metrics.json") -> str:
  """Writes workdir/eval/<name> (the evaluations during training use one file per step, so
  that they never overwrite the full evaluation of --mode=evaluate)."""
  path = os.path.join(workdir, "eval", name)
  if jax.process_index() == 0:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
      json.dump(metrics, f, indent=2)
  if writer is not None and metrics.get("step") is not None:
    writer.write_scalars(metrics["step"], {"eval/fvd": metrics["fvd"]})
    writer.flush()
  return path


def evaluate(config, workdir: str) -> dict:
  """The --mode=evaluate entry: latest checkpoint (or export) -> workdir/eval/metrics.json."""
  from clu import metric_writers  # pylint: disable=g-import-not-at-top

  from ardiff import generate  # pylint: disable=g-import-not-at-top

  params, step = generate.load_inference_params(config, workdir)
  metrics = evaluate_params(config, params, step=step)
  writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
  path = write_metrics(workdir, metrics, writer)
  print(f"FVD{metrics['num_frames']} = {metrics['fvd']:.2f} over {metrics['num_videos']} videos"
        f" (ar_step {metrics['ar_step']}); wrote {path}", flush=True)
  return metrics
