#!/usr/bin/env bash
# Train on this machine (all local devices). Usage: launch/local.sh configs/demo.py /tmp/ardiff_demo [--config.x=y ...]
set -euo pipefail
config=${1:?config file}; workdir=${2:?workdir}; shift 2
exec python -m ardiff.main --config="$config" --workdir="$workdir" "$@"
