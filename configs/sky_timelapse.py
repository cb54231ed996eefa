"""Sky-Timelapse at 256x256, the paper's hyperparameters (lr 2e-4, grad clip 1.0)."""

from configs import common


def get_config(arg=None):
  c = common.get_paper_config("sky_timelapse", learning_rate=2e-4, grad_clip=1.0, num_classes=0)
  return common.runlocal(c) if common.parse_arg(arg) else c
