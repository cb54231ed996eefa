#!/usr/bin/env bash
# Train on a multi-host Cloud TPU VM slice: copy this checkout to every host, install, and run
# the same command on all of them. --distributed makes every host call
# jax.distributed.initialize(), which finds the other hosts through the TPU metadata server (the
# coordinator, process count and id need no flags) and starts JAX's preemption service: a
# maintenance SIGTERM to any host then makes all of them save the same step and stop.
# The workdir must be storage every host sees (gs://...).
#   launch/tpu_vm.sh TPU_NAME ZONE configs/taichi.py gs://bucket/ardiff/taichi [--config.x=y ...]
set -euo pipefail
tpu=${1:?TPU name}; zone=${2:?zone}; config=${3:?config file}; workdir=${4:?workdir}; shift 4
# Quoted for the remote shell: overrides such as --config.mesh.shape='(-1,1,1)' arrive intact.
args=$(printf ' %q' --config="$config" --workdir="$workdir" --distributed "$@")
repo="$(cd "$(dirname "$0")/.." && pwd)"
gcloud compute tpus tpu-vm scp --recurse "$repo" "$tpu":~/ardiff --zone="$zone" --worker=all
gcloud compute tpus tpu-vm ssh "$tpu" --zone="$zone" --worker=all --command="
  set -e
  cd ~/ardiff
  python3 -m pip install -q -e . 'jax[tpu]==0.10.2'
  python3 -m ardiff.main$args
"
