r"""ardiff entry point.

  python -m ardiff.main --config=configs/demo.py --workdir=/tmp/ardiff_demo [--mode=train]
  python -m ardiff.main --config=configs/taichi.py --config.num_train_steps=20 --workdir=...

Any config field can be overridden as --config.a.b=value; `:runlocal` after the config file
shrinks it to a few minutes on a laptop; JAX options are flags too (--jax_debug_nans, ...).

Several processes (README, "Training on pods"): SLURM, Open MPI and (with --distributed) TPU
pods are detected by `jax.distributed.initialize`; anywhere else every process gets the same
coordinator address and process count and its own id, as flags or environment variables (the
flag wins):

  --coordinator_address=HOST:PORT  ARDIFF_COORDINATOR_ADDRESS, else JAX_COORDINATOR_ADDRESS
  --num_processes=N                ARDIFF_NUM_PROCESSES
  --process_id=I                   ARDIFF_PROCESS_ID  (0 <= I < N; process 0 serves HOST:PORT)

On CPUs, --jax_num_cpu_devices=M gives each process M devices (launch/local.sh).
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

_COORDINATOR_ADDRESS = flags.DEFINE_string(
    "coordinator_address", None,
    "Several processes: HOST:PORT of process 0, the same in every process (default"
    " $ARDIFF_COORDINATOR_ADDRESS, else $JAX_COORDINATOR_ADDRESS; SLURM, Open MPI and TPU pods"
    " need none).")
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", None, "Several processes: how many (default $ARDIFF_NUM_PROCESSES).",
    lower_bound=1)
_PROCESS_ID = flags.DEFINE_integer(
    "process_id", None,
    "Several processes: this one's id in [0, num_processes) (default $ARDIFF_PROCESS_ID).",
    lower_bound=0)

_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False,
    "Call jax.distributed.initialize() and let JAX find the cluster even where no SLURM, Open MPI"
    " or TPU environment variable says so: multi-host Cloud TPU VMs, which JAX recognises from"
    " their metadata server (launch/tpu_vm.sh passes it).")

# Environment variables of clusters that jax.distributed.initialize() detects by itself.
_CLUSTER_ENV = ("MEGASCALE_COORDINATOR_ADDRESS",)


def _cluster_detected(environ) -> bool:
  """Whether this process is one of several that JAX finds without being told: a SLURM job
  step of several tasks, an Open MPI job, a multi-host TPU slice."""
  if any(environ.get(k) for k in _CLUSTER_ENV):
    return True
  if int(environ.get("SLURM_NTASKS", "1")) > 1 or int(environ.get("OMPI_COMM_WORLD_SIZE", "1")) > 1:
    return True
  return "," in environ.get("TPU_WORKER_HOSTNAMES", "")  # a multi-host TPU slice


def _setting(flag_name: str, value, environ, *env_names: str, kind=str):
  """(value, where it came from): the flag's value if given, else the first environment
  variable that is set, else (None, None)."""
  if value is not None:
    return value, f"--{flag_name}"
  for name in env_names:
    if environ.get(name):
      try:
        return kind(environ[name]), name
      except ValueError:
        raise app.UsageError(f"{name}={environ[name]!r} is not a whole number: fix or unset it"
                             f" (or pass --{flag_name}).") from None
  return None, None


def distributed_settings(coordinator_address: str | None = None,
                         num_processes: int | None = None, process_id: int | None = None,
                         detect: bool = False, environ=os.environ) -> dict | None:
  """The keyword arguments of jax.distributed.initialize for this process: {} lets JAX detect
  its cluster (SLURM, Open MPI, TPU pod); None means a single process (nothing to initialise).
  detect: the cluster is there even if no environment variable shows it (--distributed).

  The flags' values win over the environment (ARDIFF_COORDINATOR_ADDRESS, else
  JAX_COORDINATOR_ADDRESS; ARDIFF_NUM_PROCESSES; ARDIFF_PROCESS_ID). Raises app.UsageError,
  saying what to set, for settings that do not fit together.
  """
  address, address_from = _setting("coordinator_address", coordinator_address, environ,
                                   "ARDIFF_COORDINATOR_ADDRESS", "JAX_COORDINATOR_ADDRESS")
  count, count_from = _setting("num_processes", num_processes, environ, "ARDIFF_NUM_PROCESSES",
                               kind=int)
  index, index_from = _setting("process_id", process_id, environ, "ARDIFF_PROCESS_ID", kind=int)
  if count is None and index is None:
    if not (detect or _cluster_detected(environ)):
      if address is None:
        return None
      # Outside a cluster JAX cannot fill in the count and id: it would fail with "Number of
      # processes must be defined".
      raise app.UsageError(
          f"{address_from}={address} is set but the process count and id are not, and no SLURM,"
          " Open MPI or TPU cluster is detected: also pass --num_processes=N and --process_id=I"
          " (or ARDIFF_NUM_PROCESSES / ARDIFF_PROCESS_ID), the same N in every process and I from"
          f" 0 to N-1; or unset {address_from} to run a single process.")
    return {} if address is None else {"coordinator_address": address}
  if count is None or index is None:
    given, missing = ((count_from, "--process_id (ARDIFF_PROCESS_ID)") if index is None
                      else (index_from, "--num_processes (ARDIFF_NUM_PROCESSES)"))
    raise app.UsageError(f"{given} is set but {missing} is not: give both, or neither.")
  if count < 1 or not 0 <= index < count:
    raise app.UsageError(
        f"Process id {index} ({index_from}) does not fit {count} processes ({count_from}): the"
        " count must be at least 1 and the ids run from 0 to count - 1.")
  if count == 1:
    return None
  if address is None:
    raise app.UsageError(
        f"{count_from}={count} needs a coordinator: pass --coordinator_address=HOST:PORT (or"
        " ARDIFF_COORDINATOR_ADDRESS), process 0's host and a free port, the same in every"
        " process.")
  host, _, port = address.rpartition(":")
  if not host or not port.isdigit():
    raise app.UsageError(
        f"{address_from}={address!r} is not HOST:PORT (e.g. 10.0.0.1:1234 or [::1]:1234).")
  return {"coordinator_address": address, "num_processes": count, "process_id": index}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    # The console shows ardiff's own progress lines; --verbosity=0 brings back the INFO logs
    # of clu, Orbax and TFDS.
    logging.set_verbosity(logging.WARNING)
  settings = distributed_settings(
      _COORDINATOR_ADDRESS.value, _NUM_PROCESSES.value, _PROCESS_ID.value, _DISTRIBUTED.value)
  if settings is not None:
    # Before anything touches a backend (ardiff's modules create none at import). JAX's
    # preemption notifier starts here too: it turns a SIGTERM to any process into a step that
    # all processes stop at (loop.Preemption). On CPUs the processes' collectives go through
    # gloo (jax_cpu_collectives_implementation's default).
    jax.distributed.initialize(**settings)
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
