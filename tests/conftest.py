"""Test setup: 8 fake CPU devices (before jax is imported anywhere), parsed absl flags, and the
configs the tests train (every config file at its runlocal size)."""

import functools
import glob
import importlib
import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from absl import flags  # noqa: E402

# grain's workers read absl flags; under pytest there is no absl.app.run to parse them.
flags.FLAGS.mark_as_parsed()


import pytest  # noqa: E402
from tensorboard.backend.event_processing import event_accumulator  # noqa: E402
from tensorboard.util import tensor_util  # noqa: E402


@pytest.fixture(scope="session")
def tfds_dir(tmp_path_factory):
  """A data dir shared by the tests that train on the real (built-on-first-use) datasets."""
  return str(tmp_path_factory.mktemp("tensorflow_datasets"))


def runlocal_config(name: str = "tiny", data_dir: str | None = None, **overrides):
  """configs/<name>.py at its runlocal size (configs.common.runlocal), reading data_dir; a name
  "<file>:<arg>" passes the config argument too ("demo_vae:conv" -> "conv,runlocal").

  overrides: config fields, dotted paths as keys (**{"optimizer.learning_rate": 1e-2}).
  """
  name, _, arg = name.partition(":")
  module = importlib.import_module(f"configs.{name}")
  c = module.get_config(f"{arg},runlocal" if arg else "runlocal")
  c.data.data_dir = data_dir
  for key, value in overrides.items():
    *path, last = key.split(".")
    target = c
    for p in path:
      target = target[p]
    target[last] = value
  return c


@pytest.fixture(scope="session")
def make_config(tfds_dir):
  """The tests' one way to a trainable config: make_config(name="tiny", **overrides) is
  runlocal_config on the shared test datasets."""
  return functools.partial(runlocal_config, data_dir=tfds_dir)


def read_tensors(workdir: str, tag: str) -> dict:
  """{step: value} of a summary in workdir's TensorBoard event files (scalars, GIF images)."""
  values = {}
  for f in glob.glob(os.path.join(workdir, "events.out.tfevents.*")):
    acc = event_accumulator.EventAccumulator(f, size_guidance={"tensors": 0})
    acc.Reload()
    if tag in acc.Tags()["tensors"]:
      for ev in acc.Tensors(tag):
        values[ev.step] = tensor_util.make_ndarray(ev.tensor_proto)
  return values
