"""Stage 1 for UCF-101: the paper's frame autoencoder on 256x256 frames (lr 1e-4, the GAN from
step 50_000). `:temporal` is the temporal decoder's fine-tune (set
--config.autoencoder.init_from=<this config's workdir>); `:runlocal` shrinks either."""

from configs import common


def get_config(arg=None):
  args = common.parse_args(arg, allowed=("runlocal", "temporal"))
  c = common.get_paper_vae_config("ucf101", learning_rate=1e-4, gan_start_step=50_000)
  if "temporal" in args:
    common.temporal_finetune(c)
  return common.runlocal(c) if "runlocal" in args else c
