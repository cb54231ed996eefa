"""`--mode=evaluate` and the evaluation during training: generate, compare with real clips, write.

Writes workdir/eval/metrics.json:
  {"fvd": ..., "num_videos": ..., "num_frames": ..., "ar_step": ..., "step": ..., ...}
(with prefix frames also "psnr", "ssim", "lpips" against the true continuation) and
TensorBoard scalars eval/fvd.
"""

import json
import os

from absl import logging
from clu import metric_writers
import jax
import ml_collections
import numpy as np

from ardiff import checkpoint
from ardiff import generate
from ardiff.data import datasets
from ardiff.data import patches
from ardiff.data import pipeline
from ardiff.evaluation import fvd
from ardiff.evaluation import i3d
from ardiff.evaluation import metrics as frame_metrics


def real_data_name(config) -> str:
  return config.eval.data_name or config.data.name


def real_clips(config, num_videos: int, num_frames: int) -> np.ndarray:
  """num_videos real clips of num_frames frames from config.eval.split (uint8)."""
  c = ml_collections.ConfigDict(config.to_dict())  # a copy with its own clip length and data
  c.num_frames = num_frames
  c.data.name = real_data_name(config)
  try:
    clips, _ = pipeline.load_clips(c, config.eval.split, num_videos, seed=config.eval.seed)
  except ValueError as e:
    hint = ""
    if not config.eval.data_name:
      hint = (" Set --config.eval.data_name to a dataset with longer clips of the same videos"
              f" (e.g. {config.data.name}_long), or sample fewer frames.")
    raise ValueError(
        f"FVD on {num_frames}-frame videos needs real clips of {num_frames} frames from"
        f" {c.data.name}: {e}{hint}"
    ) from e
  return clips


def real_tokens(config, num_clips: int, num_frames: int) -> np.ndarray:
  """Real clips as the model's input tokens [N, F, L, C]: the pixel patches of real_clips, or
  for a stage-2 config the latents of clips of its own dataset (data.name: the latents of
  eval.data_name are not extracted), from eval.split with eval.seed."""
  if not config.latents.autoencoder_workdir:
    return patches.video_to_tokens(config, real_clips(config, num_clips, num_frames))
  c = ml_collections.ConfigDict(config.to_dict())
  c.num_frames = num_frames
  tokens, _ = pipeline.load_clips(c, config.eval.split, num_clips, seed=config.eval.seed,
                                  latents=True)
  return tokens


def real_features_path(config, num_videos: int, num_frames: int) -> str:
  """The cache file of the I3D features of the real clips that an evaluation compares with."""
  name = real_data_name(config)
  directory = config.eval.cache_dir or os.path.join(
      datasets.resolve_data_dir(config.data.data_dir), "fvd_real_features")
  version = datasets.KNOWN[name].VERSION if name in datasets.KNOWN else "unknown"
  key = (f"{name}-{version}_{config.eval.split}_{num_frames}f_{config.data.resolution}px"
         f"_stride{config.data.frame_stride}_n{num_videos}_seed{config.eval.seed}")
  if name in datasets.VIDEO_DATASETS:  # UCF-101's official splits 1-3 hold different clips
    key += f"_split{config.data.split_number}"
  if config.data.get("grayscale", False):  # other frames than the coloured clips'
    key += "_gray"
  return os.path.join(directory, key + ".npy")


def real_features(config, num_videos: int, num_frames: int, *, progress=True) -> np.ndarray:
  """I3D features [num_videos, 400] of the real clips, read from the cache when there.

  The real side of FVD is the same for every model evaluated on a dataset, and costs as much
  as the generated side: it is computed once and kept (single-process runs; with several
  processes every process computes it, so that none waits on a file another may not see).
  """
  use_cache = jax.process_count() == 1
  path = real_features_path(config, num_videos, num_frames)
  if use_cache and os.path.exists(path):
    try:
      features = np.load(path)
      if features.shape == (num_videos, i3d.NUM_FEATURES) and np.isfinite(features).all():
        return features
      problem = f"shape {features.shape}, finite {np.isfinite(features).all()}"
    except (OSError, ValueError) as e:
      problem = f"{type(e).__name__}: {e}"
    logging.warning("Recomputing the damaged real-feature cache %s (%s).", path, problem)
  real = real_clips(config, num_videos, num_frames)
  features = fvd.i3d_features(real, batch_size=config.eval.batch_size, progress=progress)
  if use_cache:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}.npy"
    np.save(tmp, features)
    os.replace(tmp, path)  # atomic: a reader never sees half a file
  return features


def prediction_metrics(config, fake: np.ndarray) -> dict:
  """Video prediction (sampling.prefix_frames > 0): PSNR, SSIM and LPIPS of the generated
  frames after the prefix against the true continuation, the same real clips' next frames.

  The clips that gave the prefixes hold config.num_frames frames, so the frames compared are
  [prefix_frames, min(generated, config.num_frames)). Metrics the frame size does not allow
  (SSIM below 11x11, LPIPS below 32x32) are None.
  """
  begin = config.sampling.prefix_frames
  if begin >= config.num_frames:  # the prefix is the whole stored clip: nothing to compare with
    logging.warning(
        "No true continuation: the prefixes (%d frames) are whole %d-frame training clips, so"
        " PSNR/SSIM/LPIPS are not computed. Use fewer prefix frames to score prediction.",
        begin, config.num_frames)
    return {"psnr": None, "ssim": None, "lpips": None, "prediction_frames": [begin, begin],
            "prefix_split": config.sampling.prefix_split}
  truth, _ = pipeline.prefix_clips(config, len(fake))
  end = min(fake.shape[1], truth.shape[1])
  a, b = fake[:, begin:end], truth[:, begin:end]
  size = min(a.shape[2:4])
  batch = config.eval.batch_size
  mean = lambda values: float(np.mean(values))
  return {
      "psnr": mean(frame_metrics.psnr(a, b, batch_size=batch)),
      "ssim": mean(frame_metrics.ssim(a, b, batch_size=batch))
              if size >= frame_metrics.SSIM_WINDOW else None,
      "lpips": mean(frame_metrics.lpips(a, b, batch_size=batch))
               if size >= frame_metrics.LPIPS_MIN_SIZE else None,
      "prediction_frames": [int(begin), int(end)],
      "prefix_split": config.sampling.prefix_split,
  }


def evaluate_params(config, params, *, step=None, num_videos=None, progress=True) -> dict:
  """Generates videos with params, computes FVD against real clips; returns the metrics."""
  n = num_videos or config.eval.num_videos
  c = ml_collections.ConfigDict(config.to_dict())
  c.sampling.batch_size = config.eval.batch_size
  # The real side first: a missing dataset or clips too short fail before minutes of sampling.
  frames = config.sampling.num_frames or config.model.num_frames
  f_real = real_features(config, n, frames, progress=progress)
  fake = generate.generate(c, params, n, progress=progress)
  assert fake.shape[1] == frames, (fake.shape, frames)
  f_fake = fvd.i3d_features(fake, batch_size=config.eval.batch_size, progress=progress)
  metrics = {
      "fvd": fvd.fvd_from_features(f_real, f_fake),
      "num_videos": int(n),
      "num_frames": int(fake.shape[1]),
      "ar_step": int(config.sampling.ar_step),
      "num_steps": int(config.sampling.num_steps),
      "step": None if step is None else int(step),
      "dataset": config.data.name,
      "real_dataset": real_data_name(config),
      "split": config.eval.split,
  }
  if config.sampling.prefix_frames:
    metrics.update(prediction_metrics(config, fake))
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
    scalars = {f"eval/{k}": metrics[k] for k in ("fvd", "psnr", "ssim", "lpips")
               if metrics.get(k) is not None}
    writer.write_scalars(metrics["step"], scalars)
    writer.flush()
  return path


def evaluate(config, workdir: str) -> dict:
  """The --mode=evaluate entry: latest checkpoint (or export) -> workdir/eval/metrics.json."""
  params, step = checkpoint.load_inference_params(config, workdir)
  metrics = evaluate_params(config, params, step=step)
  writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
  path = write_metrics(workdir, metrics, writer)
  line = (f"FVD{metrics['num_frames']} = {metrics['fvd']:.2f} over {metrics['num_videos']} videos"
          f" (ar_step {metrics['ar_step']})")
  for name in ("psnr", "ssim", "lpips"):
    if metrics.get(name) is not None:
      line += f", {name.upper()} {metrics[name]:.4f}"
  print(f"{line}; wrote {path}", flush=True)
  return metrics
