"""FaceForensics at 256x256, the paper's hyperparameters (lr 1e-4, grad clip 0.1)."""

from configs import common


def get_config(arg=None):
  c = common.get_paper_config("faceforensics", learning_rate=1e-4, grad_clip=0.1, num_classes=0)
  return common.runlocal(c) if common.parse_arg(arg) else c
