"""Several processes on one machine, as the hosts of a pod: 2 processes x 4 fake CPU devices,
coordinated through jax.distributed (CPU collectives over gloo), train the tiny config exactly
as 1 process x 8 devices does; they read disjoint halves of each batch, only process 0 writes
summaries, their checkpoints resume in 1 process, and a SIGTERM to one of them stops both at
the same step with a checkpoint. Real multi-host hardware is not tested here."""

import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

from conftest import read_tensors

from ardiff import checkpoint
from ardiff import sharding
from ardiff import train
from ardiff import train_state
from ardiff.data import datasets
from ardiff.data import pipeline

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REFERENCE_STEPS = 8
TIMEOUT_S = 480  # per multi-process run; a hang fails the test instead of stalling CI


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def child_env() -> dict:
  # The fake devices come from --jax_num_cpu_devices, not from this process's 8-device flag.
  return dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")


def tiny_overrides(data_dir: str, **overrides) -> list[str]:
  """configs/tiny.py's overrides on the command line (as the in-process make_config sets)."""
  return [f"--config.data.data_dir={data_dir}", "--config.log_every_steps=1",
          *(f"--config.{k}={v}" for k, v in overrides.items())]


def stop(procs):
  """Kills what is still running: each process's whole session (local.sh's children too)."""
  for p in procs:
    if p.poll() is None:
      try:
        os.killpg(p.pid, signal.SIGKILL)
      except ProcessLookupError:
        pass
    p.wait()


def assert_losses_match(losses, reference, steps):
  assert set(steps) <= set(losses), (sorted(losses), steps)
  np.testing.assert_allclose([losses[s] for s in steps], [reference[s] for s in steps],
                             rtol=1e-5, atol=1e-6, err_msg=f"steps {list(steps)}")


@pytest.fixture(scope="module")
def data_dir(tfds_dir):
  # Built here, once: two processes building it on first use would race to write it.
  datasets.build("moving_digits", tfds_dir)
  return tfds_dir


@pytest.fixture(scope="module")
def reference(data_dir, make_config, tmp_path_factory):
  """Losses per step of 1 process with 8 devices (this one), same config and global batch."""
  workdir = str(tmp_path_factory.mktemp("one_process"))
  train.train_and_evaluate(
      make_config(num_train_steps=REFERENCE_STEPS, log_every_steps=1, checkpoint_every_steps=0),
      workdir)
  losses = read_tensors(workdir, "loss")
  assert sorted(losses) == list(range(1, REFERENCE_STEPS + 1))
  return losses


def test_each_process_reads_its_own_half_of_the_global_batch(data_dir, make_config):
  config = make_config()
  whole = pipeline.create_train_iterator(config, process_index=0, process_count=1)
  halves = [pipeline.create_train_iterator(config, process_index=p, process_count=2)
            for p in range(2)]
  for _ in range(2):
    batch, first, second = next(whole), next(halves[0]), next(halves[1])
    assert first["video"].shape[0] == second["video"].shape[0] == config.global_batch_size // 2
    for key in ("video", "label"):
      np.testing.assert_array_equal(np.concatenate([first[key], second[key]]), batch[key])
    # Different clips: each process gets rows of its own.
    assert not any(np.array_equal(a, b) for a in first["video"] for b in second["video"])


def test_two_processes_train_like_one_and_resume_in_one(data_dir, reference, make_config,
                                                        tmp_path):
  """launch/local.sh -n 2 -d 4: losses as 1 process x 8 devices, checkpoints and export from
  both, the summaries' samples gathered across processes; then 1 process resumes its
  checkpoint with the uninterrupted run's losses."""
  workdir = str(tmp_path / "two_processes")
  cmd = ["bash", "launch/local.sh", "-n", "2", "-d", "4", "-p", str(free_port()),
         "configs/tiny.py", workdir,
         *tiny_overrides(data_dir, num_train_steps=4, checkpoint_every_steps=2,
                         sample_every_steps=4)]
  env = dict(child_env(), PYTHON=sys.executable)
  proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, start_new_session=True)
  try:
    out, _ = proc.communicate(timeout=TIMEOUT_S)
  finally:
    stop([proc])
  log_1 = os.path.join(workdir, "logs", "process_1.log")
  other = open(log_1).read() if os.path.exists(log_1) else "(no log)"
  assert proc.returncode == 0, f"{out}\n--- process 1:\n{other}"

  assert_losses_match(read_tensors(workdir, "loss"), reference, range(1, 5))
  events = glob.glob(os.path.join(workdir, "events.out.tfevents.*"))
  assert len(events) == 1, events  # one writer: process 0's
  assert sorted(read_tensors(workdir, "samples")) == [4]  # generated on both, gathered
  ckpt = checkpoint.Checkpointer(workdir)
  try:
    assert list(ckpt.manager.all_steps()) == [2, 4]
  finally:
    ckpt.close()
  for step in (2, 4):
    data = os.path.join(workdir, "checkpoints", str(step), "data")
    assert sorted(os.listdir(data)) == ["commit_success.txt", "process_0-of-2.json",
                                        "process_1-of-2.json"]
  assert os.path.exists(os.path.join(workdir, "export", "params"))

  # 1 process x 8 devices resumes step 4 (parameters, optimizer, data position) to step 8.
  resumed = str(tmp_path / "resumed")
  shutil.copytree(os.path.join(workdir, "checkpoints"), os.path.join(resumed, "checkpoints"))
  train.train_and_evaluate(make_config(num_train_steps=REFERENCE_STEPS, log_every_steps=1,
                                       checkpoint_every_steps=0), resumed)
  losses = read_tensors(resumed, "loss")
  assert sorted(losses) == list(range(5, REFERENCE_STEPS + 1))
  assert_losses_match(losses, reference, range(5, REFERENCE_STEPS + 1))


def test_sigterm_to_one_process_stops_both_at_the_same_step(data_dir, reference, make_config,
                                                             tmp_path):
  workdir = str(tmp_path / "preempted")
  port = free_port()
  base = [sys.executable, "-m", "ardiff.main", "--config=configs/tiny.py", f"--workdir={workdir}",
          *tiny_overrides(data_dir, num_train_steps=100_000, checkpoint_every_steps=100_000),
          "--jax_num_cpu_devices=4", f"--coordinator_address=127.0.0.1:{port}",
          "--num_processes=2"]
  log_1 = open(tmp_path / "process_1.log", "w+")
  procs = []
  timer = None
  try:
    procs.append(subprocess.Popen(
        base + ["--process_id=0"], cwd=REPO, env=child_env(), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True))
    procs.append(subprocess.Popen(
        base + ["--process_id=1"], cwd=REPO, env=child_env(), stdout=log_1,
        stderr=subprocess.STDOUT, start_new_session=True))
    timer = threading.Timer(TIMEOUT_S, stop, [procs])
    timer.start()
    lines = []
    for line in procs[0].stdout:
      lines.append(line)
      if line.startswith("step 2/"):
        procs[1].send_signal(signal.SIGTERM)  # to process 1 only
    for p in procs:
      p.wait()
  finally:
    if timer is not None:
      timer.cancel()
    stop(procs)
  out_0 = "".join(lines)
  log_1.seek(0)
  out_1 = log_1.read()
  assert [p.returncode for p in procs] == [0, 0], f"{out_0}\n--- process 1:\n{out_1}"

  def saved_step(out):
    found = [line for line in out.splitlines() if "Preempted: saved step" in line]
    assert len(found) == 1, out
    return int(found[0].split("saved step ")[1].split(";")[0])

  step = saved_step(out_0)
  assert saved_step(out_1) == step >= 2  # the same step in both
  assert f"SIGTERM: saved checkpoint {step}" in out_0
  # Only process 0 writes summaries (event file names hold the writer's pid).
  events = glob.glob(os.path.join(workdir, "events.out.tfevents.*"))
  assert events and all(f".{procs[0].pid}." in os.path.basename(f) for f in events), events
  losses = read_tensors(workdir, "loss")
  assert sorted(losses) == list(range(1, step + 1))
  assert_losses_match(losses, reference, range(1, min(step, REFERENCE_STEPS) + 1))

  # The checkpoint restores here (1 process), data position included.
  config = make_config()
  mesh = sharding.make_mesh(config.mesh)
  data = pipeline.create_train_iterator(config)
  ckpt = checkpoint.Checkpointer(workdir)
  try:
    assert ckpt.latest_step() == step
    state = ckpt.restore(train_state.abstract_state(config, mesh), data)
  finally:
    ckpt.close()
  assert int(state["step"]) == step
  fresh = pipeline.create_train_iterator(config)
  for _ in range(step):
    next(fresh)
  np.testing.assert_array_equal(next(data)["video"], next(fresh)["video"])


def test_coordinator_settings_give_clear_errors():
  """The flags / environment variables of main.py, checked before JAX starts a backend."""
  script = textwrap.dedent("""
      import json
      from absl import app
      from ardiff import main
      cases = [
          ({}, {}),
          ({}, {"SLURM_NTASKS": "4"}),
          (dict(coordinator_address="h:1", num_processes=2, process_id=1), {}),
          ({}, {"ARDIFF_COORDINATOR_ADDRESS": "h:1", "ARDIFF_NUM_PROCESSES": "2",
                "ARDIFF_PROCESS_ID": "0"}),
          (dict(process_id=1), {"JAX_COORDINATOR_ADDRESS": "h:1", "ARDIFF_NUM_PROCESSES": "2",
                                "ARDIFF_PROCESS_ID": "0"}),
          (dict(num_processes=1, process_id=0), {}),
          ({}, {"JAX_COORDINATOR_ADDRESS": "h:1"}),
          (dict(coordinator_address="h:1", num_processes=2), {}),
          (dict(coordinator_address="h:1", num_processes=2, process_id=2), {}),
          (dict(num_processes=2, process_id=0), {}),
          (dict(coordinator_address="h", num_processes=2, process_id=0), {}),
          ({}, {"ARDIFF_NUM_PROCESSES": "two", "ARDIFF_PROCESS_ID": "0"}),
      ]
      for flags, environ in cases:
        try:
          print(json.dumps(main.distributed_settings(**flags, environ=environ)))
        except app.UsageError as e:
          print("UsageError:", e)
  """)
  out = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=child_env(),
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr
  results = out.stdout.strip().splitlines()
  assert results[:6] == [
      "null",
      "{}",
      '{"coordinator_address": "h:1", "num_processes": 2, "process_id": 1}',
      '{"coordinator_address": "h:1", "num_processes": 2, "process_id": 0}',
      '{"coordinator_address": "h:1", "num_processes": 2, "process_id": 1}',  # the flag wins
      "null",
  ], results
  errors = results[6:]
  assert all(e.startswith("UsageError:") for e in errors), errors
  assert "--num_processes=N and --process_id=I" in errors[0]
  assert "--process_id (ARDIFF_PROCESS_ID) is not" in errors[1]
  assert "Process id 2" in errors[2] and "0 to count - 1" in errors[2]
  assert "--coordinator_address=HOST:PORT" in errors[3]
  assert "is not HOST:PORT" in errors[4]
  assert "ARDIFF_NUM_PROCESSES='two' is not a whole number" in errors[5]
