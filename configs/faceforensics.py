"""FaceForensics at 256x256, the paper's hyperparameters (lr 1e-4, grad clip 0.1)."""

from ardiff import default_config


def get_config():
  return default_config.get_paper_config("faceforensics", learning_rate=1e-4, grad_clip=0.1, num_classes=0)
