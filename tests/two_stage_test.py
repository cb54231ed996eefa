"""The paper's two-stage pipeline at runlocal size: the autoencoder trained, its latents
extracted (deterministic, resumable), its temporal decoder fine-tuned (only temporal layers
move), stage 2 trained on the latents and its samples decoded to video; and the errors that say
which step is missing."""

import os

import jax
import numpy as np
import pytest

from ardiff import autoencoder_state
from ardiff import extract_latents
from ardiff import generate
from ardiff import train
from ardiff import train_autoencoder
from ardiff.data import datasets
from ardiff.data import frames as frames_lib
from ardiff.data import latents as latents_lib
from ardiff.data import pipeline
from ardiff.evaluation import run as evaluation
from ardiff.models import autoencoder as autoencoder_lib
from configs import common


@pytest.fixture(scope="module")
def stage1(tmp_path_factory, make_config):
  """A stage-1 workdir (2 steps of demo_vae:runlocal) with its latents extracted."""
  workdir = str(tmp_path_factory.mktemp("vae"))
  config = make_config("demo_vae", num_train_steps=2, **{"latents.shard_size": 512})
  train_autoencoder.train_and_evaluate(config, workdir)
  manifests = extract_latents.extract(config, workdir, progress=False)
  return config, workdir, manifests


def test_extraction_is_the_encoders_means_deterministic_and_resumable(stage1):
  config, workdir, first = stage1
  train_dir = os.path.join(latents_lib.dataset_dir(workdir, config.data.name), "train")
  shards = sorted(f for f in os.listdir(train_dir) if f.endswith(".array_record"))
  assert len(shards) == 4  # 2000 videos in shards of 512
  with open(os.path.join(train_dir, shards[1]), "rb") as f:
    reference = f.read()
  # A stopped run: the manifest and a shard missing. Resuming rewrites only those.
  os.remove(os.path.join(train_dir, latents_lib.MANIFEST))
  os.remove(os.path.join(train_dir, shards[1]))
  kept = os.path.getmtime(os.path.join(train_dir, shards[0]))
  second = extract_latents.extract(config, workdir, progress=False)
  assert second == first
  assert os.path.getmtime(os.path.join(train_dir, shards[0])) == kept
  with open(os.path.join(train_dir, shards[1]), "rb") as f:
    assert f.read() == reference  # the same bytes: deterministic

  source = latents_lib.LatentSource(train_dir)
  assert len(source) == first["train"]["num_videos"] == 2000
  assert first["test"]["num_videos"] == 256 and sum(first["train"]["num_frames"]) == 2000 * 32
  record = source[7]
  assert record["latents"].shape == (32, 8, 4) and record["index"] == 7
  # Each frame's latent is the encoder's posterior mean of that frame.
  params, _, _ = autoencoder_state.load_params(workdir)
  video = datasets.open_split(config.data.name, "train", config.data.data_dir)[7]["video"]
  x = frames_lib.resize_frames(np.asarray(video), 16)[None].astype(np.float32) / 255
  model = autoencoder_lib.build_autoencoder(config.autoencoder)
  mean, _ = model.apply({"params": params}, x, method="encode")
  np.testing.assert_allclose(record["latents"], np.asarray(mean[0]), rtol=1e-4, atol=1e-5)


def test_temporal_finetune_trains_only_temporal_layers(stage1, make_config, tmp_path):
  _, workdir, _ = stage1
  config = make_config("demo_vae", **{"autoencoder.init_from": workdir})
  common.temporal_finetune(config)
  config.num_frames, config.global_batch_size, config.num_train_steps = 4, 8, 3
  config.optimizer.learning_rate = 1e-2
  fine = str(tmp_path / "temporal")
  train_autoencoder.train_and_evaluate(config, fine)
  before, _, _ = autoencoder_state.load_params(workdir)
  after, _, step = autoencoder_state.load_params(fine)
  assert step == 3
  before = {jax.tree_util.keystr(p): np.asarray(v)
            for p, v in jax.tree_util.tree_flatten_with_path(before)[0]}
  after = [(jax.tree_util.keystr(p), np.asarray(v))
           for p, v in jax.tree_util.tree_flatten_with_path(after)[0]]
  new = [name for name, _ in after if name not in before]
  assert new and all("temporal" in name for name in new)
  for name, value in after:
    if name in before:  # the encoder and the per-frame decoder: exactly as stage 1 left them
      np.testing.assert_array_equal(value, before[name], err_msg=name)
  assert any(np.abs(v).max() > 0 for name, v in after  # the temporal layers left their zero init
             if "temporal" in name and "out_proj_kernel" in name)


def stage2_config(make_config, workdir, **overrides):
  return make_config("demo_latent", **{"latents.autoencoder_workdir": workdir, **overrides})


def test_stage2_trains_on_latents_and_samples_decode_to_video(stage1, make_config, tmp_path):
  _, workdir, _ = stage1
  config = stage2_config(make_config, workdir, num_train_steps=2, checkpoint_every_steps=2,
                         sample_every_steps=2)
  out = str(tmp_path / "stage2")
  scalars = train.train_and_evaluate(config, out)
  assert np.isfinite(scalars["loss"])
  config.sampling.prefix_frames = 2  # a latent prefix: the test split's latents
  config.sampling.num_videos = 3
  videos = generate.sample_and_save(config, out)
  samples = np.load(videos["npy"])
  assert samples.shape == (3, 12, 16, 16, 3) and samples.dtype == np.uint8
  # The given frames come back as the autoencoder's reconstruction of the real clips' latents.
  tokens, _ = pipeline.prefix_tokens(config, 3)
  np.testing.assert_array_equal(samples[:, :2], generate.tokens_to_video(config, tokens))


def test_the_conv_autoencoder_runs_both_stages_on_white_digits(make_config, tmp_path):
  """demo_vae:conv -> its latents (grey frames, in [-1, 1], 2x2 patches of the grid's cells)
  -> demo_latent:conv (times latents.scale) -> video."""
  vae = str(tmp_path / "vae")
  config = make_config("demo_vae:conv", num_train_steps=2, **{"latents.shard_size": 512})
  train_autoencoder.train_and_evaluate(config, vae)
  manifests = extract_latents.extract(config, vae, progress=False)
  assert manifests["train"]["tokens_per_frame"] == 4 and manifests["train"]["channels"] == 16
  assert manifests["train"]["identity"]["grayscale"]
  record = latents_lib.LatentSource(latents_lib.split_dir(config, "train", vae))[3]
  assert record["latents"].shape == (32, 4, 16) and np.abs(record["latents"]).max() <= 1
  # The latents are those of the white digits the autoencoder trained on.
  params, _, _ = autoencoder_state.load_params(vae)
  video = datasets.open_split(config.data.name, "train", config.data.data_dir)[3]["video"]
  x = frames_lib.grayscale(frames_lib.resize_frames(np.asarray(video), 16))
  model = autoencoder_lib.build_autoencoder(config.autoencoder)
  mean, _ = model.apply({"params": params}, x[None].astype(np.float32) / 255, method="encode")
  np.testing.assert_allclose(record["latents"], np.asarray(mean[0]), rtol=1e-4, atol=1e-5)

  stage2 = make_config("demo_latent:conv", num_train_steps=2, checkpoint_every_steps=2,
                       **{"latents.autoencoder_workdir": vae})
  assert (stage2.model.tokens_per_frame, stage2.model.in_channels) == (4, 16)
  # What demo_quality's context gain reads for stage 2: the latents of held-out clips, as
  # they are (this decoder reads unnormalised latents), times latents.scale.
  raw = make_config("demo_latent:conv", **{"latents.autoencoder_workdir": vae,
                                           "latents.scale": 1.0})
  latents = evaluation.real_tokens(raw, 3, 4)
  assert latents.shape == (3, 4, 4, 16) and np.abs(latents).max() <= 1
  assert not np.allclose(np.linalg.norm(latents, axis=-1), 1.0, atol=1e-3)
  scale = stage2.latents.scale
  assert scale == 4.0
  np.testing.assert_allclose(evaluation.real_tokens(stage2, 3, 4), scale * latents, rtol=1e-6)
  # Decoding divides the scale out: the same frames (to a rounding step of uint8).
  np.testing.assert_allclose(generate.tokens_to_video(stage2, scale * latents).astype(int),
                             generate.tokens_to_video(raw, latents).astype(int), atol=1)
  # Normalising would lose the norms this decoder reads: an error that says what to set.
  with pytest.raises(ValueError, match="latents.l2_normalize=False"):
    train.check_config(make_config("demo_latent:conv", **{"latents.autoencoder_workdir": vae,
                                                          "latents.l2_normalize": True}))
  out = str(tmp_path / "stage2")
  assert np.isfinite(train.train_and_evaluate(stage2, out)["loss"])
  stage2.sampling.num_videos, stage2.sampling.num_frames = 2, 6
  samples = np.load(generate.sample_and_save(stage2, out)["npy"])
  assert samples.shape == (2, 6, 16, 16, 3) and samples.dtype == np.uint8


def test_stage2_reads_the_papers_tokens_normalised_everywhere(stage1, make_config):
  """latents.l2_normalize (the paper's tokenizer): every token of training batches, real clips
  and sampling prefixes has unit norm, the same token directions as the extracted latents."""
  _, workdir, _ = stage1
  config = stage2_config(make_config, workdir, **{"sampling.prefix_frames": 2})
  batch = next(pipeline.create_train_iterator(config))
  tokens = evaluation.real_tokens(config, 3, 4)
  prefix, _ = pipeline.prefix_tokens(config, 3)
  raw = stage2_config(make_config, workdir, **{"latents.l2_normalize": False,
                                               "sampling.prefix_frames": 2})
  raw_prefix, _ = pipeline.prefix_tokens(raw, 3)
  for t in (batch["latents"], tokens, prefix):
    np.testing.assert_allclose(np.linalg.norm(t, axis=-1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(
      prefix, raw_prefix / np.linalg.norm(raw_prefix, axis=-1, keepdims=True), rtol=1e-5)
  assert not np.allclose(np.linalg.norm(raw_prefix, axis=-1), 1.0, atol=1e-3)


def test_missing_steps_are_named(stage1, make_config, tmp_path):
  _, workdir, _ = stage1
  with pytest.raises(ValueError, match=r"(?s)latents.autoencoder_workdir.*_vae.py"):
    train.check_config(make_config("demo_latent"))
  with pytest.raises(FileNotFoundError, match="--mode=extract_latents"):
    train.check_config(stage2_config(make_config, str(tmp_path / "no_vae")))
  with pytest.raises(ValueError, match="tokens_per_frame=8 and config.model.in_channels=4"):
    train.check_config(stage2_config(make_config, workdir, **{"model.in_channels": 6}))
  with pytest.raises(ValueError, match="data.resolution=16"):
    train.check_config(stage2_config(make_config, workdir, **{"data.resolution": 32}))


def test_the_gan_and_lpips_need_room_in_the_frame(make_config):
  config = make_config("demo_vae", **{"autoencoder.loss.gan_start_step": 0,
                                      "autoencoder.loss.disc_layers": 3})
  with pytest.raises(ValueError, match="disc_layers"):
    train_autoencoder.check_config(config)
  config = make_config("demo_vae", **{"autoencoder.loss.lpips_net": "alexnet"})
  with pytest.raises(ValueError, match="lpips_net=vgg16"):
    train_autoencoder.check_config(config)
