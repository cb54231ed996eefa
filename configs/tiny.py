"""The default config at its runlocal size (4 frames of 16x16 pixels, 2 layers of width 32), with
a learning rate that makes 10 steps count: what the unit tests build models from."""

from ardiff import default_config
from configs import common


def get_config(arg=None):
  del arg  # already as small as runlocal makes it
  c = common.runlocal(default_config.get_default_config())
  c.optimizer.learning_rate = 1e-3
  return c
