#!/usr/bin/env bash
# Train on this machine.
#   launch/local.sh CONFIG WORKDIR [--config.x=y ...]
#     one process on all local devices (GPUs if any, else the CPU).
#   launch/local.sh -n 2 -d 4 configs/demo.py:runlocal /tmp/ardiff_pod [--config.x=y ...]
#     the pod code path on a laptop: N processes on the CPU, each with M fake devices (N x M in
#     all), coordinated through jax.distributed on 127.0.0.1 as the hosts of a pod would be.
#     Process 0 prints to the terminal, process i > 0 to WORKDIR/logs/process_<i>.log.
#     Ctrl-C or a SIGTERM to this script reaches every process: they save and stop together.
# Options: -n processes (default 1), -d CPU devices per process (default 4 when n > 1; with
# n = 1, on the CPU), -p coordinator port (default: a free one). $PYTHON (default python).
set -euo pipefail

usage() {
  echo "usage: $0 [-n processes] [-d devices_per_process] [-p port] CONFIG WORKDIR [--flag=value ...]" >&2
  exit 2
}

num_processes=1
devices=""
port=""
while getopts "n:d:p:h" opt; do
  case "$opt" in
    n) num_processes=$OPTARG ;;
    d) devices=$OPTARG ;;
    p) port=$OPTARG ;;
    *) usage ;;
  esac
done
shift $((OPTIND - 1))
(($# >= 2)) || usage
config=$1
workdir=$2
shift 2
python=${PYTHON:-python}

for value in "$num_processes" "$devices" "$port"; do
  if [[ -n $value && ! $value =~ ^[0-9]+$ ]]; then
    echo "$0: -n, -d and -p take whole numbers, not '$value'." >&2
    exit 2
  fi
done
if ((num_processes < 1)); then
  echo "$0: -n must be at least 1." >&2
  exit 2
fi

if ((num_processes == 1)); then
  if [[ -z $devices ]]; then
    exec "$python" -m ardiff.main --config="$config" --workdir="$workdir" "$@"
  fi
  exec "$python" -m ardiff.main --config="$config" --workdir="$workdir" --jax_platforms=cpu \
    --jax_num_cpu_devices="$devices" "$@"
fi

devices=${devices:-4}
if [[ -z $port ]]; then
  port=$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
fi
mkdir -p "$workdir/logs"
echo "Starting $num_processes processes x $devices CPU devices, coordinator 127.0.0.1:$port;" \
  "logs of processes 1.. in $workdir/logs." >&2

pids=()
# Background processes of a script ignore SIGINT: pass Ctrl-C on as the SIGTERM of a
# preemption, which every process turns into a checkpoint at the same step.
trap 'echo "$0: stopping: SIGTERM to every process (they save a checkpoint first)." >&2
  kill -TERM "${pids[@]}" 2>/dev/null || true' INT TERM

for ((i = 0; i < num_processes; i++)); do
  args=(-m ardiff.main --config="$config" --workdir="$workdir" --jax_platforms=cpu
    --jax_num_cpu_devices="$devices" --coordinator_address="127.0.0.1:$port"
    --num_processes="$num_processes" --process_id="$i" "$@")
  if ((i == 0)); then
    "$python" "${args[@]}" &
  else
    "$python" "${args[@]}" >"$workdir/logs/process_$i.log" 2>&1 &
  fi
  pids+=("$!")
done

# Wait for all; when one fails, the others would wait for it in their collectives until
# JAX's heartbeat timeout: end them at once.
status=0
running=$num_processes
while ((running > 0)); do
  running=0
  for i in "${!pids[@]}"; do
    pid=${pids[$i]}
    [[ -n $pid ]] || continue
    if kill -0 "$pid" 2>/dev/null; then
      running=$((running + 1))
      continue
    fi
    rc=0
    wait "$pid" || rc=$?
    pids[i]=""
    if ((rc != 0 && status == 0)); then
      status=$rc
      echo "$0: process $i failed (exit status $rc); ending the others." >&2
      for other in "${pids[@]}"; do
        [[ -z $other ]] || kill -KILL "$other" 2>/dev/null || true
      done
    fi
  done
  if ((running > 0)); then
    sleep 1
  fi
done
exit "$status"
