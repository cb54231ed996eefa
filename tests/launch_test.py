"""The launch scripts: bash parses them, shellcheck finds nothing (where it is installed), and
launch/local.sh says what is wrong with its options. tests/multiprocess_test.py runs it."""

import glob
import os
import shutil
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = sorted(glob.glob(os.path.join(REPO, "launch", "*")))


def test_there_are_launch_scripts():
  names = {os.path.basename(s) for s in SCRIPTS}
  assert {"local.sh", "slurm.sbatch", "tpu_vm.sh"} <= names, names


@pytest.mark.parametrize("script", SCRIPTS, ids=os.path.basename)
def test_bash_parses(script):
  out = subprocess.run(["bash", "-n", script], capture_output=True, text=True, timeout=60)
  assert out.returncode == 0, out.stderr


@pytest.mark.parametrize("script", SCRIPTS, ids=os.path.basename)
def test_shellcheck_is_clean(script):
  if shutil.which("shellcheck") is None:
    pytest.skip("shellcheck is not installed (Debian/Ubuntu: apt-get install shellcheck).")
  out = subprocess.run(["shellcheck", "--shell=bash", script], capture_output=True, text=True,
                       timeout=60)
  assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("args, message", [
    ([], "usage:"),
    (["configs/tiny.py"], "usage:"),
    (["-n", "two", "configs/tiny.py", "/tmp/w"], "whole numbers, not 'two'"),
    (["-n", "0", "configs/tiny.py", "/tmp/w"], "-n must be at least 1"),
])
def test_local_sh_rejects_bad_options(args, message):
  out = subprocess.run(["bash", os.path.join(REPO, "launch", "local.sh"), *args],
                       capture_output=True, text=True, timeout=60)
  assert out.returncode == 2 and message in out.stderr, out.stderr
