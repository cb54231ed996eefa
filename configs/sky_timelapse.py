"""Sky-Timelapse at 256x256, the paper's hyperparameters (lr 2e-4, grad clip 1.0)."""

from ardiff import default_config


def get_config():
  return default_config.get_paper_config("sky_timelapse", learning_rate=2e-4, grad_clip=1.0, num_classes=0)
