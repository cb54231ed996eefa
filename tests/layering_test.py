"""The package's import direction and the config files: runlocal shrinks every config."""

import ast
import importlib
import os
import subprocess
import sys

import pytest

from configs import common

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = ["demo", "tiny", "taichi", "sky_timelapse", "faceforensics", "ucf101"]


@pytest.mark.parametrize("module", ["ardiff.sampling", "ardiff.generate", "ardiff.evaluation",
                                    "ardiff.evaluation.run", "ardiff.checkpoint"])
def test_lower_layers_do_not_import_the_trainer(module):
  """sampling -> generate -> evaluation -> train -> main: nothing below imports the trainer."""
  code = (f"import sys, {module}; bad = [m for m in ('ardiff.train', 'ardiff.main') if m in"
          " sys.modules]; assert not bad, bad")
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
  full = importlib.import_module(f"configs.{name}").get_config()
  small = importlib.import_module(f"configs.{name}").get_config("runlocal")
  assert small.model.depth == 2 and small.model.hidden_size == 32
  assert small.num_frames == small.model.num_frames == 4
  assert small.global_batch_size == 8 and small.num_train_steps == 10
  # What runlocal leaves alone: the dataset, the diffusion, the kind of tokens.
  assert small.data.name == full.data.name and small.diffusion == full.diffusion
  pixels = full.model.tokens_per_frame == (full.data.resolution // full.data.patch_size) ** 2
  if pixels:
    assert (small.data.resolution, small.model.tokens_per_frame) == (16, 16)
  else:  # latent tokens of the frame autoencoder keep their shape
    assert (small.model.tokens_per_frame, small.model.in_channels) == (
        full.model.tokens_per_frame, full.model.in_channels)
  if full.sampling.num_frames:  # long-video sampling stays long relative to the window
    assert small.sampling.num_frames * full.num_frames == full.sampling.num_frames * 4


def test_config_argument_is_checked():
  with pytest.raises(ValueError, match="runlocal"):
    common.parse_arg("runlcoal")
  # configs/ is a package: importable from anywhere, no sys.path edits.
  out = subprocess.run([sys.executable, "-c", "import configs.demo as d; print(d.__file__)"],
                       cwd="/", capture_output=True, text=True, check=True)
  assert out.stdout.strip() == os.path.join(REPO, "configs", "demo.py")
