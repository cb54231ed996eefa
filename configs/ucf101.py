"""UCF-101 (class-conditional) at 256x256, the paper's hyperparameters (lr 1e-4, grad clip 0.1)."""

from configs import common


def get_config(arg=None):
  c = common.get_paper_config("ucf101", learning_rate=1e-4, grad_clip=0.1, num_classes=101)
  # The reference means to drop 20 % of labels (its randn < 0.2 drops about 58 %).
  c.label_drop = 0.2
  return common.runlocal(c) if common.parse_arg(arg) else c
