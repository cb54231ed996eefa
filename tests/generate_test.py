"""--mode=sample and --mode=evaluate on a tiny trained workdir: files, shapes, metrics.json."""

import json
import os
import shutil

import imageio.v3 as iio
import numpy as np
import pytest

from conftest import read_tensors

from ardiff import checkpoint
from ardiff import generate
from ardiff import train
from ardiff.evaluation import fvd
from ardiff.evaluation import run as run_eval


# A 4-frame model sampled at three times its window, in two batches (the last one padded).
SAMPLED = {"num_train_steps": 2, "checkpoint_every_steps": 2, "sampling.num_frames": 12,
           "sampling.num_videos": 3, "sampling.batch_size": 2}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, make_config):
  workdir = str(tmp_path_factory.mktemp("trained"))
  config = make_config(**SAMPLED)
  config.sample_every_steps = 2  # real samples in the summaries
  config.eval_every_steps = 2  # and a small evaluation during training
  config.eval.num_videos_during_training = 4
  train.train_and_evaluate(config, workdir)
  return workdir


def test_training_summaries_hold_samples_and_fvd(trained):
  assert 2 in read_tensors(trained, "samples")
  fvd = read_tensors(trained, "eval/fvd")
  assert 2 in fvd and np.isfinite(float(fvd[2]))
  # One file per evaluation during training: the full --mode=evaluate file stays its own.
  with open(os.path.join(trained, "eval", "metrics_step00000002.json")) as f:
    assert json.load(f)["step"] == 2


def test_sample_mode_writes_videos(trained, make_config):
  config = make_config(**SAMPLED)
  paths = generate.sample_and_save(config, trained)
  samples = np.load(paths["npy"])
  assert samples.shape == (3, 12, 16, 16, 3) and samples.dtype == np.uint8
  out = os.path.join(trained, "samples")
  for i in range(3):
    mp4 = iio.imread(os.path.join(out, f"video_{i:03d}.mp4"), plugin="FFMPEG")
    gif = iio.imread(os.path.join(out, f"video_{i:03d}.gif"), index=None)
    assert mp4.shape[0] == 12 and gif.shape[0] == 12
  assert iio.imread(paths["grid_gif"], index=None).shape[0] == 12
  assert iio.imread(paths["grid_png"]).ndim == 3
  # The same seed gives the same videos, whatever the batch size.
  config.sampling.batch_size = 3
  again = generate.generate(config, checkpoint.load_inference_params(config, trained)[0], 3, progress=False)
  np.testing.assert_array_equal(again, samples)


def test_sample_from_export_and_with_prefix(trained, make_config, tmp_path):
  export_only = str(tmp_path / "export_only")
  shutil.copytree(os.path.join(trained, "export"), os.path.join(export_only, "export"))
  config = make_config(**SAMPLED)
  params, step = checkpoint.load_inference_params(config, export_only)
  assert step is None
  config.sampling.prefix_frames = 2
  videos = generate.generate(config, params, 2, progress=False)
  from ardiff.data import pipeline  # noqa: PLC0415

  clips, _ = pipeline.load_clips(config, "test", 2, seed=config.sampling.seed)
  # Given frames come back as they were (up to the uint8 -> [-1, 1] -> uint8 round trip).
  np.testing.assert_array_equal(videos[:, :2], clips[:, :2])


def test_sample_without_a_model_says_train_first(tmp_path, make_config):
  with pytest.raises(FileNotFoundError, match="train first"):
    checkpoint.load_inference_params(make_config(**SAMPLED), str(tmp_path))


def test_sampling_with_another_window_or_colour_than_trained_says_which(trained, make_config):
  # The weights' shapes do not depend on these fields: without the check they would load and
  # sample a 6-frame window over a 4-frame model, or white frames with a coloured one's weights.
  config = make_config(**SAMPLED)
  config.num_frames = 6
  config.data.grayscale = True
  with pytest.raises(ValueError, match=r"num_frames=6 where the run trained with 4.*"
                     r"data.grayscale=True where the run trained with False.*"
                     r"--config.num_frames=4 --config.data.grayscale=False"):
    checkpoint.load_inference_params(config, trained)
  # Fine-tuning from the run (config.init_from) may change them.
  params, step = checkpoint.load_inference_params(config, trained, same_run=False)
  assert step == 2 and params


def test_evaluate_mode_writes_metrics(trained, tfds_dir, make_config):
  config = make_config(**SAMPLED)
  metrics = run_eval.evaluate(config, trained)
  with open(os.path.join(trained, "eval", "metrics.json")) as f:
    saved = json.load(f)
  assert saved == metrics
  assert {"fvd", "num_videos", "num_frames", "ar_step", "step"} <= set(saved)
  assert saved["num_videos"] == 4 and saved["num_frames"] == 12 and saved["step"] == 2
  assert saved["ar_step"] == config.sampling.ar_step
  assert np.isfinite(saved["fvd"]) and saved["fvd"] > 0
  assert saved["real_dataset"] == "moving_digits"
  # The real clips' features are kept in the data dir for the next evaluation.
  path = run_eval.real_features_path(config, 4, 12)
  assert path.startswith(os.path.join(tfds_dir, "fvd_real_features"))
  assert np.load(path).shape == (4, 400)


def test_evaluate_video_prediction(trained, make_config):
  from ardiff import evaluation  # noqa: PLC0415
  from ardiff.data import pipeline  # noqa: PLC0415

  config = make_config(**SAMPLED)
  config.sampling.prefix_frames = 2
  config.eval.num_videos = 3
  config.eval.batch_size = 2
  params, step = checkpoint.load_inference_params(config, trained)
  metrics = run_eval.evaluate_params(config, params, step=step, progress=False)
  assert metrics["prefix_split"] == "test" and np.isfinite(metrics["fvd"])
  # The same videos (seeded) and the clips whose first 2 of 4 frames were given.
  config.sampling.batch_size = 2
  fake = generate.generate(config, params, 3, progress=False)
  truth, _ = pipeline.load_clips(config, "test", 3, seed=config.sampling.seed)
  assert metrics["prediction_frames"] == [2, 4]
  a, b = fake[:, 2:4], truth[:, 2:4]
  assert metrics["psnr"] == pytest.approx(evaluation.psnr(a, b).mean(), rel=1e-9)
  assert metrics["ssim"] == pytest.approx(evaluation.ssim(a, b).mean(), rel=1e-6)
  assert 0 < metrics["ssim"] < 1 and 0 < metrics["psnr"] < 60
  assert metrics["lpips"] is None  # 16x16 frames: AlexNet needs 32x32

  # At 32x32 all three: the true continuation itself scores perfectly, noise does not.
  config.data.resolution = 32
  truth, _ = pipeline.load_clips(config, "test", 3, seed=config.sampling.seed)
  perfect = np.concatenate([truth, truth[:, :8]], axis=1)  # 12 generated frames, 4 compared
  scores = run_eval.prediction_metrics(config, perfect)
  assert scores["psnr"] == np.inf and scores["ssim"] == pytest.approx(1.0, abs=1e-6)
  assert abs(scores["lpips"]) < 1e-6
  noisy = np.clip(perfect + np.random.default_rng(0).normal(0, 20, perfect.shape), 0, 255)
  scores = run_eval.prediction_metrics(config, noisy.astype(np.uint8))
  assert 10 < scores["psnr"] < 40 and scores["ssim"] < 0.9 and scores["lpips"] > 0.01
  # Prefixes that are whole stored clips leave no true continuation: no scores, not NaN.
  config.sampling.prefix_frames = config.num_frames
  scores = run_eval.prediction_metrics(config, perfect)
  assert scores["prediction_frames"] == [4, 4]
  assert scores["psnr"] is None and scores["ssim"] is None and scores["lpips"] is None


def test_real_features_are_cached(make_config, tmp_path, monkeypatch):
  config = make_config(**SAMPLED)
  config.eval.cache_dir = str(tmp_path)
  first = run_eval.real_features(config, 2, 12, progress=False)
  path = run_eval.real_features_path(config, 2, 12)
  np.testing.assert_array_equal(np.load(path), first)
  # Each setting that changes the real clips has a file of its own.
  other = make_config(**SAMPLED)
  other.eval.cache_dir = str(tmp_path)
  paths = {path, run_eval.real_features_path(other, 3, 12), run_eval.real_features_path(other, 2, 9)}
  other.eval.seed, other.data.resolution = 1, 32
  paths.add(run_eval.real_features_path(other, 2, 12))
  other.eval.data_name = "moving_digits_long"
  paths.add(run_eval.real_features_path(other, 2, 12))
  other.data.grayscale = True
  paths.add(run_eval.real_features_path(other, 2, 12))
  assert len(paths) == 6

  def no_i3d(*args, **kwargs):
    raise AssertionError("the I3D ran although its features were in the cache")

  with monkeypatch.context() as m:
    m.setattr(fvd, "i3d_features", no_i3d)
    np.testing.assert_array_equal(run_eval.real_features(config, 2, 12, progress=False), first)
  # A damaged file is recomputed (the same features) and replaced.
  with open(path, "wb") as f:
    f.write(b"not a numpy file")
  np.testing.assert_allclose(run_eval.real_features(config, 2, 12, progress=False), first,
                             rtol=1e-6)
  np.testing.assert_array_equal(np.load(path), first)


def test_long_videos_take_real_clips_from_a_long_dataset(make_config, monkeypatch):
  config = make_config(**SAMPLED)
  # moving_digits stores 32 frames: the message names the setting that helps.
  with pytest.raises(ValueError, match="40 frames.*--config.eval.data_name.*moving_digits_long"):
    run_eval.real_clips(config, 2, 40)
  # --mode=evaluate says so before it spends minutes generating videos.
  config.sampling.num_frames = 40

  def no_generation(*args, **kwargs):
    raise AssertionError("videos were generated before the real clips were checked")

  monkeypatch.setattr(generate, "generate", no_generation)
  with pytest.raises(ValueError, match="--config.eval.data_name"):
    run_eval.evaluate_params(config, None, num_videos=2, progress=False)
  config.eval.data_name = "moving_digits_long"
  clips = run_eval.real_clips(config, 2, 40)
  assert clips.shape == (2, 40, 16, 16, 3) and clips.dtype == np.uint8


def test_sample_mode_streams_long_videos(trained, make_config):
  # Segments of one frame (the buffer on the device: the window plus one frame), and videos
  # longer than gif_max_frames: the mp4 files and samples.npy are written frame chunk by
  # frame chunk, no GIF; the videos are those of the one-program generate().
  config = make_config(**SAMPLED)
  config.sampling.stream_segment_frames = 1
  config.sampling.gif_max_frames = 8
  workdir = trained
  paths = generate.sample_and_save(config, workdir)
  assert "grid_gif" not in paths
  samples = np.load(paths["npy"])
  whole = generate.generate(config, checkpoint.load_inference_params(config, workdir)[0], 3,
                            progress=False)
  np.testing.assert_array_equal(samples, whole)
  mp4 = iio.imread(os.path.join(workdir, "samples", "video_002.mp4"), plugin="FFMPEG")
  assert mp4.shape == (12, 64, 64, 3)
  # The video's mp4 against its frames (H.264 is lossy: close, not equal).
  assert np.abs(mp4[:, ::4, ::4].astype(float) - samples[2]).mean() < 12
