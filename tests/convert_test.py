"""The reference's released checkpoints in ardiff: the reference variant of the DiT, the converter
(ardiff.convert) and the reference's sampling conventions, against outputs of the reference's own
code (tests/data/reference_parity.npz, written by benchmarks/reference_parity.py with torch; no
torch here)."""

import logging
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors import numpy as safetensors_numpy

from ardiff import autoencoder_state
from ardiff import checkpoint
from ardiff import convert
from ardiff import diffusion
from ardiff import generate
from ardiff import sampling
from ardiff import sharding
from ardiff import train
from ardiff.models import autoencoder as autoencoder_lib
from ardiff.models import build_model
from benchmarks import reference_parity as rp
from configs import common

DATA = os.path.join(os.path.dirname(__file__), "data")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def fixture():
  return dict(np.load(os.path.join(DATA, "reference_parity.npz")))


def dit_case(case):
  """(config, path of the reference's safetensors) of a tiny DiT of the fixture."""
  config = rp.dit_config(rp.TINY_DIT, rp.NUM_CLASSES if case == "dit_class" else 0)
  return config, os.path.join(DATA, f"reference_{case}.safetensors")


@pytest.mark.parametrize("case", ["dit_uncond", "dit_class"])
def test_dit_forward_equals_the_references(fixture, case):
  config, path = dit_case(case)
  params = convert.convert_checkpoint(path, config, "dit")
  labels = jnp.asarray(fixture[f"{case}/labels"]) if config.model.num_classes else None
  out = build_model(config).apply({"params": params}, fixture[f"{case}/x"], fixture[f"{case}/t"],
                                  labels)
  want = fixture[f"{case}/out"]
  assert np.abs(want).max() > 0.5  # random weights everywhere: not the zero function of init
  np.testing.assert_allclose(np.asarray(out), want, rtol=0, atol=1e-5)


def test_reference_sampling_conventions_give_the_references_samples(fixture):
  # The class-conditional model, guidance 2 (its null row is class_emb[0]), 10 DDIM steps,
  # ar_step 2: the reference's sampler against ardiff's with its conventions switched on.
  case = "dit_class"
  config, path = dit_case(case)
  model, variables = build_model(config), {"params": convert.convert_checkpoint(path, config)}
  keys = jax.random.split(jax.random.key(rp.SEED), rp.BATCH)
  np.testing.assert_array_equal(  # the reference ran from ardiff's initial noise
      np.asarray(sampling.initial_noise(keys, fixture[f"{case}/x_T"].shape[1:])),
      fixture[f"{case}/x_T"])
  labels = jnp.asarray(fixture[f"{case}/sample_labels"])
  run = lambda c: np.asarray(sampling.sample(model, variables, c, jax.random.key(rp.SEED),
                                             num_videos=rp.BATCH, labels=labels))
  want = fixture[f"{case}/samples"]
  np.testing.assert_allclose(run(config), want, rtol=0, atol=2e-4)  # measured 3.7e-5
  # Each convention matters: without it the samples are far from the reference's.
  config.sampling.finished_timestep = 0
  assert np.abs(run(config) - want).max() > 1e-3
  config.sampling.timestep_grid, config.sampling.finished_timestep = "ardiff", 1
  assert np.abs(run(config) - want).max() > 1e-2


def test_reference_ddim_timesteps():
  grid = diffusion.reference_ddim_timesteps(1000, 50)
  np.testing.assert_array_equal(grid[:3], [981, 961, 941])
  np.testing.assert_array_equal(grid[-3:], [21, 1, 0])
  assert len(grid) == 51
  with pytest.raises(ValueError, match="divide"):
    diffusion.reference_ddim_timesteps(1000, 30)


def test_autoencoder_equals_the_references(fixture, tmp_path):
  # TiTok_KL at the smallest size the reference's code builds ("small" ViTs, 83M parameters):
  # its weights are regenerated from the seeded rule the parity script drew them with.
  spec = __import__("json").loads(str(fixture["autoencoder/spec"]))
  config = rp.autoencoder_config(rp.SMALL_AE)
  # The reference's keys and shapes are exactly those of the key map, each used once.
  expected = {k: p.shape for p in convert.autoencoder_key_map(config) for k in p.keys()}
  assert len(expected) == sum(len(p.keys()) for p in convert.autoencoder_key_map(config))
  assert {k: tuple(shape) for k, shape, _, _ in spec} == expected
  path = str(tmp_path / "model.safetensors")
  safetensors_numpy.save_file(rp.random_weights(spec), path)
  params = convert.convert_checkpoint(path, config, "autoencoder")
  model = autoencoder_lib.build_autoencoder(config.autoencoder)
  pixels = fixture["autoencoder/pixels"].transpose(0, 1, 3, 4, 2)  # [B, T, H, W, 3]
  mean, logvar = jax.jit(lambda p, x: model.apply({"params": p}, x, method="encode"))(params, pixels)
  decoded = jax.jit(lambda p, z: model.apply({"params": p}, z, method="decode"))(params, mean)
  moments = fixture["autoencoder/moments"]  # [B, T, 2C, 1, N]
  c = moments.shape[2] // 2
  np.testing.assert_allclose(mean, moments[:, :, :c, 0].transpose(0, 1, 3, 2), atol=2e-5)
  np.testing.assert_allclose(logvar, moments[:, :, c:, 0].transpose(0, 1, 3, 2), atol=2e-5)
  want = fixture["autoencoder/decoded"]
  assert np.abs(want).max() > 0.5
  np.testing.assert_allclose(np.asarray(decoded).transpose(0, 1, 4, 2, 3), want, atol=5e-5)


def _random_tree(shapes, seed=0):
  leaves, treedef = jax.tree.flatten(shapes)
  rng = np.random.default_rng(seed)
  return treedef.unflatten([rng.standard_normal(a.shape).astype(np.float32) for a in leaves])


@pytest.mark.parametrize("kind,temporal", [("dit", False), ("autoencoder", False),
                                           ("autoencoder", True)])
def test_round_trip_uses_every_key_once(kind, temporal):
  # ardiff -> reference layout -> ardiff gives the same arrays; the temporal autoencoder (the
  # reference's TiTok_KL_wT, whose code needs CUDA to import) is checked this way only.
  if kind == "dit":
    config = rp.dit_config(rp.TINY_DIT, 3)
  else:
    config = common.runlocal(rp.autoencoder_config(rp.SMALL_AE))
    config.autoencoder.temporal, config.autoencoder.temporal_window = temporal, 4
    config.autoencoder.num_heads, config.autoencoder.norm_groups = 2, 8
  tree = _random_tree(convert.model_shapes(config, kind))
  state = convert.to_reference(tree, config, kind)
  keys = [k for p in convert.key_map(config, kind) for k in p.keys()]
  assert len(keys) == len(set(keys)) and set(keys) <= set(state)
  if temporal:
    assert any(".coarse_temporal_blocks.0.ln_v.weight" in k for k in state)
  back = convert.convert_state_dict(state, config, kind)
  jax.tree.map(np.testing.assert_array_equal, back, tree)
  # An extra key is not silently dropped.
  with pytest.raises(ValueError, match=r"unexpected \(1\): decoder.extra"):
    convert.convert_state_dict({**state, "decoder.extra": np.zeros(1)}, config, kind)


def test_a_checkpoint_of_other_sizes_fails_naming_keys_and_fields():
  config, path = dit_case("dit_class")
  config.model.depth, config.model.hidden_size = 3, 64
  with pytest.raises(ValueError) as error:
    convert.convert_checkpoint(path, config)
  message = str(error.value)
  for part in ("missing (10): blocks.2.", "mis-shaped", "x_embedder.weight: checkpoint (32, 4),"
               " config (64, 4)", "model.depth: checkpoint 2, config 3",
               "model.hidden_size: checkpoint 32, config 64"):
    assert part in message, (part, message)
  config, path = dit_case("dit_class")
  config.model.num_classes = 0  # the checkpoint is class-conditional
  with pytest.raises(ValueError, match=r"(?s)missing \(1\): context_emb.*unexpected \(1\):"
                     r" class_emb.*model.num_classes: checkpoint 3, config 0"):
    convert.convert_checkpoint(path, config)
  config.model.variant = "ardiff"
  with pytest.raises(ValueError, match="--config.model.variant=reference"):
    convert.convert_checkpoint(path, config)


def test_a_checkpoint_of_another_noise_schedule_fails():
  config, path = dit_case("dit_uncond")
  config.diffusion.beta_schedule = "cosine"
  with pytest.raises(ValueError, match="another noise schedule.*betas.*beta_schedule='cosine'"):
    convert.convert_checkpoint(path, config)
  config.diffusion.beta_schedule, config.diffusion.num_timesteps = "linear", 500
  with pytest.raises(ValueError, match="1000 steps.*num_timesteps=500"):
    convert.convert_checkpoint(path, config)


def test_the_variant_refuses_the_kv_cache(caplog):
  config, path = dit_case("dit_uncond")
  config.sampling.kv_cache = True
  model = build_model(config)
  variables = {"params": convert.convert_checkpoint(path, config)}
  with caplog.at_level(logging.WARNING):
    sampler = sampling.make_sampler(model, config)
  assert sampler.plan is None  # every call runs the whole window
  assert "variant='reference'" in caplog.text and "earlier frames depend on later" in caplog.text
  with pytest.raises(ValueError, match="sampling.kv_cache=False"):
    model.apply(variables, None, 1, method="context_kv")


def test_reference_variant_parameters_are_named_and_scanned():
  config, _ = dit_case("dit_class")
  model = build_model(config)
  m = config.model
  x = jnp.zeros((1, m.num_frames, m.tokens_per_frame, m.in_channels))
  abstract = jax.eval_shape(model.init, jax.random.key(0), x, jnp.zeros((1, m.num_frames), jnp.int32),
                            jnp.zeros((1,), jnp.int32))
  leaves = jax.tree_util.tree_leaves_with_path(
      abstract, is_leaf=lambda a: isinstance(a, nn.LogicallyPartitioned))
  assert leaves and all(isinstance(a, nn.LogicallyPartitioned) for _, a in leaves)
  for path, a in leaves:
    in_blocks = "'blocks'" in jax.tree_util.keystr(path)
    assert len(a.names) == a.value.ndim and (a.names[0] == "layers") == in_blocks, path
    assert not in_blocks or a.value.shape[0] == m.depth


def test_converted_exports_sample_and_start_training(tmp_path):
  # The DiT through the command line, a (tiny, random) reference-layout autoencoder through the
  # API; then what --mode=sample runs: load_inference_params and generate, decoding the latents
  # with the converted autoencoder.
  config, path = dit_case("dit_uncond")
  dit_dir, ae_dir = str(tmp_path / "dit"), str(tmp_path / "ae")
  command = [sys.executable, "-m", "ardiff.convert", f"--checkpoint={path}", "--kind=dit",
             f"--config={os.path.join(ROOT, 'configs', 'tiny.py')}", f"--workdir={dit_dir}",
             "--config.model.variant=reference", "--config.num_frames=3",
             "--config.model.tokens_per_frame=4", "--config.model.in_channels=4",
             "--config.model.num_heads=4", "--config.model.mlp_ratio=4.0",
             "--config.model.reference_context_tokens=5", "--config.model.reference_context_dim=24"]
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
  result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env)
  assert result.returncode == 0, result.stderr[-3000:]
  assert '"kind": "dit"' in result.stdout
  ae_config = common.runlocal(rp.autoencoder_config(rp.SMALL_AE))
  ae_config.autoencoder.num_latent_tokens = config.model.tokens_per_frame
  ae_config.autoencoder.num_heads, ae_config.autoencoder.norm_groups = 2, 8
  tree = _random_tree(convert.model_shapes(ae_config, "autoencoder"), seed=1)
  ae_state = convert.to_reference(tree, ae_config, "autoencoder")
  ae_params = convert.convert_state_dict(ae_state, ae_config, "autoencoder")
  convert.write_export(ae_params, ae_config, "autoencoder", ae_dir)
  loaded, _, step = autoencoder_state.load_params(ae_dir)
  assert step is None
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(loaded), ae_params)

  config.latents.autoencoder_workdir = ae_dir
  config.sampling.num_videos = config.sampling.batch_size = 2
  params, step = checkpoint.load_inference_params(config, dit_dir)
  assert step is None
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(params),
               convert.convert_checkpoint(path, config))
  videos = generate.generate(config, params, 2, progress=False)
  assert videos.shape == (2, 3, 16, 16, 3) and videos.dtype == np.uint8

  # config.init_from: a new run starts from the export's parameters (EMA too), step 0.
  config.init_from = dit_dir
  mesh = sharding.make_mesh(config.mesh)
  state = train.create_state(config, mesh, jax.random.key(3))
  assert int(state["step"]) == 0
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state["params"]),
               jax.device_get(params))
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state["ema_params"]),
               jax.device_get(params))
  config.init_from = str(tmp_path / "nothing")
  with pytest.raises(ValueError, match="config.init_from=.*nothing"):
    train.create_state(config, mesh, jax.random.key(3))
