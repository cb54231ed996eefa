"""Test setup: 8 fake CPU devices (before jax is imported anywhere) and parsed absl flags."""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from absl import flags  # noqa: E402

# grain's workers read absl flags; under pytest there is no absl.app.run to parse them.
flags.FLAGS.mark_as_parsed()


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tfds_dir(tmp_path_factory):
  """A data dir shared by the tests that train on the real (built-on-first-use) datasets."""
  return str(tmp_path_factory.mktemp("tensorflow_datasets"))
