"""Test setup: 8 fake CPU devices (before jax is imported anywhere), parsed absl flags, and the
configs the tests train (every config file at its runlocal size)."""

import functools
import glob
import importlib
import os

# The tests' programs are small and each compiled once: LLVM at -O1 compiles them about twice
# as fast as at the default -O2 (a jitted autoencoder init: 3.9 s against 7.7 s) and runs them
# as fast (models_test + attention_test: 199 s against 247 s in all; -O0 compiles faster still
# but runs the RNG-heavy timesteps tests 4x slower).
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    " --xla_backend_optimization_level=1"
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


# The README runs the tests on 2 workers, a module to a worker (`-n 2 --dist loadfile
# --no-loadscope-reorder`: a module fixture is built once, modules go in the order below). The
# longest modules start first, so that the short ones fill in at the end instead of one worker
# finishing a long module alone; the rest keep pytest's order. Worker minutes on 2 cores
# (--durations=0, 38.7 in all, 19.8 minutes wall): 6.3, 6.2, 5.3, 4.0, 3.4, 3.1, 2.5, 1.8, 1.5.
LONGEST_MODULES_FIRST = ("two_stage_test.py", "train_test.py", "sampling_test.py",
                         "autoencoder_test.py", "models_test.py", "multiprocess_test.py",
                         "generate_test.py", "video_datasets_test.py", "attention_test.py")


def pytest_collection_modifyitems(items):
  rank = {name: i for i, name in enumerate(LONGEST_MODULES_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
