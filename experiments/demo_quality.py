r"""The demo's figures: FVD48 against the real-vs-real floor, object persistence, and pictures.

  python -m experiments.demo_quality --workdir=/tmp/ardiff_demo [--config=configs/demo.py] \
      [--num_videos=128] [--long_videos=32] [--kv_cache_modes=exact] [--out=docs]

A run trained with overrides (e.g. --config.num_frames=6) is measured with the same ones: the
weights are refused otherwise (checkpoint.check_same_run). For the demo model in --workdir
(latest checkpoint's EMA weights, or its export):
- FVD48: --num_videos generated 48-frame videos (config.sampling's ar_step; the window slides
  over three times its length) against as many real 48-frame clips of config.eval.data_name;
  the floor is two disjoint draws of real clips against each other (eval seeds 0 and 1).
- Persistence: the object mass (the sum over pixels of the brightest channel, in [0, 1]) of
  the last 8 frames over that of the first 8, generated and real. A video whose digits fade or
  dissolve scores well below the real ratio (about 1: digits bounce and stay in the frame).
- Long rollouts: --long_videos videos of 128 frames generated frame by frame (ar_step =
  num_steps; --long_ar_step=3 for the demo's AD schedule instead) from a 4-frame real prefix:
  their persistence (last 8 frames over the 8 after the prefix), and a picture. Frame by frame
  they take config.sampling.frame_by_frame_history_guidance_scale,
  frame_by_frame_noise_temperature and frame_by_frame_finished_timestep where set.
- Faded: the fraction of videos (and rollouts) that keep less than 0.6 of their object mass,
  last 8 frames against the first 8 (metrics.faded; a video that lost one of two digits keeps
  about half): a mean over videos hides such a video behind one whose objects grow.
- With --kv_cache_modes=exact,rolling, FVD48 once per KV-cache mode (issue: what the rolling
  cache costs in quality). With history guidance (config.sampling.history_guidance_scale != 1)
  the sampler runs without cache, so every mode gives the same videos.
- Legibility (ardiff.evaluation.digits, moving digits only): a digit reader trained for the
  run on frames drawn as the dataset draws them (its probabilities calibrated on held-out ones)
  reads every frame; "legible" is the fraction of frames it is sure of and reads a digit in,
  "kept" the fraction whose digits are the video's most frequent set (a digit that turns into
  another lowers it); generated and real, over 48 frames and over the 128-frame rollouts after
  their prefix.
- Context gain (metrics.context_gain): on 64 real clips of the window's length, the MSE of the
  model's one-step x0 estimate of frame 8 (the last frame of a shorter window) noised to t
  (400, 600, 800) with the frames before it noised alike, over the same with them clean. About
  1: the model does not use the frames before (it cannot carry a digit over from them, and long
  rollouts break up); a model that does scores well above 1.

Writes <out>/demo_quality.json (every number, with the settings), <out>/demo_samples.png
(rows: 48-frame samples, 12 evenly spaced frames), <out>/demo_long.png (rows: 128-frame
rollouts, 16 frames), and prints the README's table.
"""

import json
import os
import time

from absl import app
from absl import flags
import imageio.v3 as iio
import jax
import jax.numpy as jnp
import ml_collections
from ml_collections import config_flags
import numpy as np

from ardiff import checkpoint
from ardiff import diffusion
from ardiff import generate
from ardiff import sampling
from ardiff import video_io
from ardiff.evaluation import digits
from ardiff.evaluation import fvd
from ardiff.evaluation import metrics
from ardiff.evaluation import run as evaluation
from ardiff.models import build_model

_CONFIG = config_flags.DEFINE_config_file("config", "configs/demo.py", "The demo's config.")
_WORKDIR = flags.DEFINE_string("workdir", None, "The trained demo run.", required=True)
_NUM_VIDEOS = flags.DEFINE_integer("num_videos", 128, "Videos per FVD side.")
_LONG_VIDEOS = flags.DEFINE_integer("long_videos", 32, "128-frame rollouts.")
_LONG_AR_STEP = flags.DEFINE_integer(
    "long_ar_step", None, "ar_step of the 128-frame rollouts; default num_steps (frame by frame).")
_MODES = flags.DEFINE_list("kv_cache_modes", ["exact"], "KV-cache modes to score FVD48 with.")
_OUT = flags.DEFINE_string("out", "docs", "Where the JSON and the pictures go.")

LONG_FRAMES, LONG_PREFIX = 128, 4
CONTEXT_CLIPS, CONTEXT_FRAME, CONTEXT_TIMESTEPS = 64, 8, (400, 600, 800)


def strip(videos: np.ndarray, columns: int, rows: int = 8) -> np.ndarray:
  """uint8 picture: one row per video (the first `rows`), `columns` evenly spaced frames,
  upscaled 2x."""
  return video_io.upscale(video_io.frame_strip(videos[:rows], columns)[0], 2)


def with_sampling(config, **fields) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict(config.to_dict())
  for name, value in fields.items():
    setattr(c.sampling, name, value)
  c.sampling.batch_size = c.eval.batch_size
  return c


def context_frame(config) -> int:
  """The frame the context gain scores: frame 8, or the window's last for a shorter window."""
  return min(CONTEXT_FRAME, config.model.num_frames - 1)


def context_gains(config, params) -> dict:
  """metrics.context_gain of the model on real clips of its window, per timestep."""
  model = build_model(config)
  # (stage 2: in latent space, so not comparable with a pixel model's)
  x0 = jnp.asarray(evaluation.real_tokens(config, CONTEXT_CLIPS, config.model.num_frames))
  apply = jax.jit(lambda x, t: model.apply({"params": params}, x, t, None))
  sched = diffusion.schedule_from_config(config.diffusion)
  return {str(t): metrics.context_gain(apply, sched, config.diffusion.parameterization, x0, t,
                                       context_frame(config), jax.random.key(config.eval.seed))
          for t in CONTEXT_TIMESTEPS}


def main(argv):
  del argv
  config = _CONFIG.value
  n = _NUM_VIDEOS.value
  params, step = checkpoint.load_inference_params(config, _WORKDIR.value)
  frames = config.sampling.num_frames
  results = {"workdir": _WORKDIR.value, "step": step, "num_videos": n, "num_frames": frames,
             "ar_step": config.sampling.ar_step, "num_steps": config.sampling.num_steps,
             "eta": config.sampling.eta,
             "history_guidance_scale": sampling.history_guidance_scale(config.sampling),
             "history_guidance_mode": config.sampling.history_guidance_mode,
             "noise_temperature": sampling.noise_temperature(config.sampling),
             "real_dataset": evaluation.real_data_name(config)}

  # The real side, and its floor: two disjoint draws (eval seeds 0 and 1).
  real = evaluation.real_clips(config, n, frames)
  f_real = evaluation.real_features(config, n, frames)
  other = ml_collections.ConfigDict(config.to_dict())
  other.eval.seed = config.eval.seed + 1
  f_other = evaluation.real_features(other, n, frames)
  results["fvd_real_vs_real"] = fvd.fvd_from_features(f_real, f_other)
  results["persistence_real"] = metrics.persistence(real)
  results["faded_real"] = metrics.faded(real)
  glyph = digits.glyph_size(results["real_dataset"])
  typeface = digits.is_typeface(results["real_dataset"])
  reader = digits.train_reader(config.data.resolution, glyph, typeface=typeface) if glyph else None
  if reader:
    results["reader_accuracy"] = reader.accuracy
    results["reader_temperature"] = reader.temperature
    results["legibility_real"] = digits.legibility(reader, real)

  for mode in _MODES.value:
    t0 = time.perf_counter()
    fake = generate.generate(with_sampling(config, kv_cache_mode=mode), params, n)
    seconds = time.perf_counter() - t0
    f_fake = fvd.i3d_features(fake, batch_size=config.eval.batch_size)
    results[f"fvd_{mode}"] = fvd.fvd_from_features(f_real, f_fake)
    results[f"persistence_{mode}"] = metrics.persistence(fake)
    results[f"faded_{mode}"] = metrics.faded(fake)
    results[f"sampling_s_{mode}"] = seconds
    if reader:
      results[f"legibility_{mode}"] = digits.legibility(reader, fake)
    if mode == _MODES.value[0]:
      for name in ("fvd", "persistence", "faded"):
        results[name] = results[f"{name}_{mode}"]
      if reader:
        results["legibility"] = results[f"legibility_{mode}"]
      os.makedirs(_OUT.value, exist_ok=True)
      iio.imwrite(os.path.join(_OUT.value, "demo_samples.png"), strip(fake, 12))

  if _LONG_VIDEOS.value:
    long_ar_step = _LONG_AR_STEP.value
    if long_ar_step is None:  # (0, synchronous, is a schedule of its own)
      long_ar_step = config.sampling.num_steps
    c = with_sampling(config, num_frames=LONG_FRAMES, ar_step=long_ar_step,
                      prefix_frames=LONG_PREFIX)
    long = generate.generate(c, params, _LONG_VIDEOS.value)
    real_long = evaluation.real_clips(config, _LONG_VIDEOS.value, LONG_FRAMES)
    results["long_persistence"] = metrics.persistence(long, first=LONG_PREFIX)
    results["long_faded"] = metrics.faded(long, first=LONG_PREFIX)
    results["long_faded_real"] = metrics.faded(real_long, first=LONG_PREFIX)
    if reader:
      results["long_legibility"] = digits.legibility(reader, long, first=LONG_PREFIX)
      results["long_legibility_real"] = digits.legibility(reader, real_long, first=LONG_PREFIX)
    results["long_frames"], results["long_prefix"] = LONG_FRAMES, LONG_PREFIX
    results["long_ar_step"] = long_ar_step
    results["long_history_guidance_scale"] = sampling.history_guidance_scale(c.sampling)
    results["long_noise_temperature"] = sampling.noise_temperature(c.sampling)
    results["long_finished_timestep"] = sampling.finished_timestep(c.sampling)
    iio.imwrite(os.path.join(_OUT.value, "demo_long.png"), strip(long, 16))

  results["context_gain"] = context_gains(config, params)
  results["context_frame"] = context_frame(config)

  path = os.path.join(_OUT.value, "demo_quality.json")
  with open(path, "w") as f:
    json.dump(results, f, indent=2)
  floor = results["fvd_real_vs_real"]
  print(f"\n{jax.devices()[0].platform}; step {step}; {n} videos; wrote {path}\n")
  print("| figure | generated | real | target |\n|---|---|---|---|")
  for mode in _MODES.value:
    print(f"| FVD{frames}, ar_step {config.sampling.ar_step}, {mode} cache |"
          f" {results[f'fvd_{mode}']:.1f} | {floor:.1f} (real vs real) | <= {4 * floor:.1f} |")
    print(f"| persistence, {frames} frames, {mode} cache | {results[f'persistence_{mode}']:.3f} |"
          f" {results['persistence_real']:.3f} | about the real one |")
    print(f"| faded videos (less than 0.6 of the mass kept), {frames} frames, {mode} cache |"
          f" {results[f'faded_{mode}']:.3f} | {results['faded_real']:.3f} | none |")
    if reader:
      for name in ("legible", "kept"):
        print(f"| {name} frames (digit reader), {frames} frames, {mode} cache |"
              f" {results[f'legibility_{mode}'][name]:.2f} |"
              f" {results['legibility_real'][name]:.2f} | about the real one |")
  for t, g in results["context_gain"].items():
    print(f"| context gain, frame {results['context_frame']} at t = {t} (x0 MSE, earlier frames"
          f" noisy / clean) | {g['gain']:.3f} | | well above 1 |")
  if "long_persistence" in results:
    how = ("frame by frame" if results["long_ar_step"] == config.sampling.num_steps
           else f"at ar_step {results['long_ar_step']}")
    print(f"| persistence, {LONG_FRAMES} frames {how} from {LONG_PREFIX} real |"
          f" {results['long_persistence']:.3f} | {results['persistence_real']:.3f} | about the"
          " real one |")
    print(f"| faded rollouts (less than 0.6 of the mass kept), {LONG_FRAMES} frames {how} |"
          f" {results['long_faded']:.3f} | {results['long_faded_real']:.3f} | none |")
  if "long_legibility" in results:
    for name in ("legible", "kept"):
      print(f"| {name} frames (digit reader), {LONG_FRAMES} frames {how} |"
            f" {results['long_legibility'][name]:.2f} |"
            f" {results['long_legibility_real'][name]:.2f} | about the real one |")
  if reader:
    print(f"\nThe digit reader reads {reader.accuracy:.1%} of held-out real frames exactly"
          f" (its logits calibrated by a temperature of {reader.temperature:.2f}).")


if __name__ == "__main__":
  app.run(main)
