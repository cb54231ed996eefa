"""Stage 1 for Sky-Timelapse: the paper's frame autoencoder on 256x256 frames (lr 2e-4, the GAN from
step 100_000). `:temporal` is the temporal decoder's fine-tune (set
--config.autoencoder.init_from=<this config's workdir>); `:runlocal` shrinks either."""

from configs import common


def get_config(arg=None):
  args = common.parse_args(arg, allowed=("runlocal", "temporal"))
  c = common.get_paper_vae_config("sky_timelapse", learning_rate=2e-4, gan_start_step=100_000)
  if "temporal" in args:
    common.temporal_finetune(c)
  return common.runlocal(c) if "runlocal" in args else c
