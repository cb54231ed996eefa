r"""ardiff entry point.

  python -m ardiff.main --config=configs/demo.py --workdir=/tmp/ardiff_demo [--mode=train]
  python -m ardiff.main --config=configs/taichi.py --config.num_train_steps=20 --workdir=...

Any config field can be overridden as --config.a.b=value; `:runlocal` after the config file
shrinks it to a few minutes on a laptop; JAX options are flags too (--jax_debug_nans, ...).
"""

import os

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from ardiff import extract_latents
from ardiff import generate
from ardiff import train
from ardiff import train_autoencoder
from ardiff.evaluation import run as run_eval

# Every JAX option becomes an absl flag (--jax_platforms=cpu, --jax_log_compiles, ...).
jax.config.config_with_absl()

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, summaries, samples.")
_MODE = flags.DEFINE_enum(
    "mode", "train", ["train", "sample", "evaluate", "extract_latents"],
    "What to run: train (the model config.trainer names), sample, evaluate, or extract_latents"
    " (an autoencoder's latents of config.data.name, for stage 2).")
flags.mark_flags_as_required(["config", "workdir"])

# Environment variables that say this process is one of several.
_CLUSTER_ENV = ("JAX_COORDINATOR_ADDRESS", "COORDINATOR_ADDRESS", "MEGASCALE_COORDINATOR_ADDRESS")


def _multiprocess() -> bool:
  if any(os.environ.get(k) for k in _CLUSTER_ENV):
    return True
  if int(os.environ.get("SLURM_NTASKS", "1")) > 1 or int(os.environ.get("OMPI_COMM_WORLD_SIZE", "1")) > 1:
    return True
  return "," in os.environ.get("TPU_WORKER_HOSTNAMES", "")  # a multi-host TPU slice


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    # The console shows ardiff's own progress lines; --verbosity=0 brings back the INFO logs
    # of clu, Orbax and TFDS.
    logging.set_verbosity(logging.WARNING)
  if _multiprocess():
    # TPU pods detect themselves; GPU clusters through SLURM / Open MPI / JAX_COORDINATOR_*.
    jax.distributed.initialize()
  logging.info("JAX process %d / %d, devices: %s", jax.process_index(), jax.process_count(), jax.devices())
  config = _CONFIG.value
  if config.trainer not in ("diffusion", "autoencoder"):
    raise app.UsageError(f"config.trainer={config.trainer!r}: diffusion or autoencoder.")
  if config.trainer == "autoencoder" and _MODE.value in ("sample", "evaluate"):
    raise app.UsageError(
        f"--mode={_MODE.value} runs a diffusion config; this one trains the autoencoder (its"
        " reconstructions are in TensorBoard). Use --mode=train or --mode=extract_latents.")
  if _MODE.value == "train":
    if config.trainer == "autoencoder":
      train_autoencoder.train_and_evaluate(config, _WORKDIR.value)
    else:
      train.train_and_evaluate(config, _WORKDIR.value)
  elif _MODE.value == "extract_latents":
    extract_latents.extract(config, _WORKDIR.value)
  elif _MODE.value == "sample":
    generate.sample_and_save(config, _WORKDIR.value)
  else:
    run_eval.evaluate(config, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main)
