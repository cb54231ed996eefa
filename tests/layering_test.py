"""The package's import direction and the config files: runlocal shrinks every config."""

import ast
import importlib
import os
import subprocess
import sys

import pytest

from configs import common

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATASETS = ["taichi", "sky_timelapse", "faceforensics", "ucf101"]
CONFIGS = ["demo", "tiny", "demo_latent", "demo_latent:conv", *DATASETS]  # stage 2 (the DiT)
VAE_CONFIGS = ["demo_vae", "demo_vae:temporal", "demo_vae:conv", *[f"{d}_vae" for d in DATASETS],
               *[f"{d}_vae:temporal" for d in DATASETS]]  # stage 1 (the frame autoencoder)


def get_config(name, *args):
  name, _, arg = name.partition(":")
  return importlib.import_module(f"configs.{name}").get_config(",".join(filter(None, [arg, *args])))


@pytest.mark.parametrize("module", ["ardiff.sampling", "ardiff.generate", "ardiff.evaluation",
                                    "ardiff.evaluation.run", "ardiff.checkpoint",
                                    "ardiff.autoencoder_state", "ardiff.extract_latents"])
def test_lower_layers_do_not_import_the_trainers(module):
  """sampling -> generate -> evaluation -> the trainers -> main: nothing below imports them."""
  code = (f"import sys, {module}; bad = [m for m in ('ardiff.train', 'ardiff.train_autoencoder',"
          " 'ardiff.main') if m in sys.modules]; assert not bad, bad")
  subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True,
                 env=dict(os.environ, JAX_PLATFORMS="cpu"))


def test_every_import_is_at_the_top_of_its_file():
  """No function-level imports in the package: dependencies are read off the file headers."""
  offenders = []
  for root, _, files in os.walk(os.path.join(REPO, "ardiff")):
    for name in files:
      if name.endswith(".py"):
        path = os.path.join(root, name)
        with open(path) as f:
          tree = ast.parse(f.read())
        top = {id(node) for node in tree.body}
        offenders += [f"{os.path.relpath(path, REPO)}:{node.lineno}" for node in ast.walk(tree)
                      if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in top]
  assert not offenders, offenders


@pytest.mark.parametrize("name", CONFIGS)
def test_runlocal_shrinks_every_config(name):
  full, small = get_config(name), get_config(name, "runlocal")
  assert small.trainer == full.trainer == "diffusion"
  assert small.model.depth == 2 and small.model.hidden_size == 32
  assert small.num_frames == small.model.num_frames == 4
  assert small.global_batch_size == 8 and small.num_train_steps == 10
  # What runlocal leaves alone: the dataset, the diffusion, the kind of tokens.
  assert small.data.name == full.data.name and small.diffusion == full.diffusion
  assert small.data.resolution == 16
  p = full.data.patch_size
  pixels = (full.model.tokens_per_frame == (full.data.resolution // p) ** 2
            and full.model.in_channels == p * p * 3)
  if pixels:
    assert (small.model.tokens_per_frame, small.model.in_channels) == (16, 48)
  elif full.autoencoder.kind == "conv":  # a runlocal conv autoencoder's: a 4x4 grid in patches
    p = full.autoencoder.latent_patch_size
    assert (small.model.tokens_per_frame, small.model.in_channels) == ((4 // p) ** 2, 4 * p * p)
  else:  # the latents of a runlocal tokenizer (below)
    assert (small.model.tokens_per_frame, small.model.in_channels) == (8, 4)
  if full.sampling.num_frames:  # long-video sampling stays long relative to the window
    assert small.sampling.num_frames * full.num_frames == full.sampling.num_frames * 4


@pytest.mark.parametrize("name", VAE_CONFIGS)
def test_runlocal_shrinks_every_autoencoder_config(name):
  full, small = get_config(name), get_config(name, "runlocal")
  assert small.trainer == full.trainer == "autoencoder"
  assert small.data.name == full.data.name
  ae = small.autoencoder
  assert (ae.image_size, ae.patch_size, ae.width) == (16, 4, 32)
  # What stage 2's runlocal expects (the conv kind: 16x16 frames halved twice, a 4x4 grid
  # read in latent_patch_size patches).
  p = ae.latent_patch_size
  assert (ae.num_latent_tokens, ae.token_channels) == (
      ((4 // p) ** 2, 4 * p * p) if ae.kind == "conv" else (8, 4))
  assert small.num_frames == (4 if full.autoencoder.temporal else 1)
  assert ae.temporal == full.autoencoder.temporal
  assert ae.train_only_temporal == full.autoencoder.train_only_temporal
  if full.data.name in DATASETS:  # the paper's stage 1
    paper = full.autoencoder
    assert (paper.image_size, paper.patch_size, paper.width, paper.encoder_depth) == (256, 16, 1024, 24)
    assert (paper.num_latent_tokens, paper.token_channels, paper.use_l2_norm) == (32, 4, True)


def test_config_argument_is_checked():
  with pytest.raises(ValueError, match="runlocal"):
    common.parse_arg("runlcoal")
  # configs/ is a package: importable from anywhere, no sys.path edits.
  out = subprocess.run([sys.executable, "-c", "import configs.demo as d; print(d.__file__)"],
                       cwd="/", capture_output=True, text=True, check=True)
  assert out.stdout.strip() == os.path.join(REPO, "configs", "demo.py")


def test_the_conv_stage2_fits_the_conv_stage1():
  """configs/demo_latent.py:conv models the tokens configs/demo_vae.py:conv extracts, at full
  size and at runlocal size."""
  for arg in ("", "runlocal"):
    vae, latent = get_config("demo_vae:conv", arg), get_config("demo_latent:conv", arg)
    assert (latent.model.tokens_per_frame, latent.model.in_channels) == (
        vae.autoencoder.num_latent_tokens, vae.autoencoder.token_channels)
