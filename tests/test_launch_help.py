"""Every script a user runs answers --help with its usage and exit status 0:
launch/*.sh (but launch/test.sh), launch/lock_constraints.py,
benchmarks/gpu_paper_vl.sh and every benchmarks/*.py that is a script (has a
`__main__` block).

A bash script is run from a copy in an empty folder, with PYTHON pointing at
`false` and VENV inside the folder: one that did any work before reading
--help (a venv, pip, a data set, mkdir) fails or leaves files there.
The scripts run side by side in threads (the Python ones import absl / jax).
"""
from __future__ import annotations

import concurrent.futures
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
BASH_SCRIPTS = ["launch/local.sh", "launch/tpu_pod.sh", "launch/gpu_slurm.sh", "launch/aot.sh",
                "launch/setup_venv.sh", "benchmarks/gpu_paper_vl.sh"]
NOT_USER_SCRIPTS = {"launch/test.sh"}  # the test command itself


def python_scripts():
  found = [p for p in sorted((ROOT / "benchmarks").glob("*.py")) + [ROOT / "launch" /
                                                                     "lock_constraints.py"]
           if 'if __name__ == "__main__":' in p.read_text(encoding="utf-8")]
  return [str(p.relative_to(ROOT)) for p in found]


def run_bash_copy(script: str, tmp: pathlib.Path, arg: str):
  """(completed process, paths left in tmp besides the copy and its folder)."""
  copy = tmp / script
  copy.parent.mkdir(parents=True)
  shutil.copy(ROOT / script, copy)
  env = dict(os.environ, PYTHON="false", VENV=str(tmp / "venv"), WORKDIR=str(tmp / "wd"),
             METALM_DATA_DIR=str(tmp / "data"), HOME=str(tmp / "home"))
  p = subprocess.run(["bash", str(copy), arg], cwd=tmp, env=env, capture_output=True,
                     text=True, timeout=60)
  left = sorted(str(f.relative_to(tmp)) for f in tmp.rglob("*")
                if f != copy and f not in copy.parents)
  return p, left


def run_python(script: str, arg: str = "--help"):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, script, arg], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=120)


def says_usage(script: str, out: str) -> bool:
  return "usage" in out.lower() or os.path.basename(script) in out


def test_every_launch_script_is_covered():
  shell = {str(p.relative_to(ROOT)) for p in (ROOT / "launch").glob("*.sh")}
  shell |= {str(p.relative_to(ROOT)) for p in (ROOT / "benchmarks").glob("*.sh")}
  assert shell - NOT_USER_SCRIPTS == set(BASH_SCRIPTS)
  py = python_scripts()
  assert "benchmarks/train_step.py" in py and "launch/lock_constraints.py" in py
  assert "benchmarks/torch_reference.py" not in py  # a module train_step.py imports


@pytest.mark.parametrize("arg", ["--help", "-h"])
def test_bash_scripts_print_their_header_and_do_nothing_else(tmp_path, arg):
  with concurrent.futures.ThreadPoolExecutor(len(BASH_SCRIPTS)) as pool:
    runs = dict(zip(BASH_SCRIPTS, pool.map(
        lambda s: run_bash_copy(s, tmp_path / s.replace("/", "_"), arg), BASH_SCRIPTS)))
  for script, (p, left) in runs.items():
    assert p.returncode == 0, (script, p.stdout[-1000:], p.stderr[-1000:])
    assert says_usage(script, p.stdout), (script, p.stdout)
    assert f"bash {script}" in p.stdout, (script, p.stdout)  # the header's usage line
    assert not p.stdout.startswith("#!") and "set -" not in p.stdout, (script, p.stdout)
    assert not left, (script, left)


def test_bash_help_is_the_header_comment(tmp_path):
  """The usage is printed from the header, not written a second time."""
  p, _ = run_bash_copy("launch/tpu_pod.sh", tmp_path, "--help")
  header = []
  for line in (ROOT / "launch" / "tpu_pod.sh").read_text().splitlines()[1:]:
    if not line.startswith("#"):
      break
    header.append(line[2:] if line.startswith("# ") else line[1:])
  assert p.stdout == "\n".join(header) + "\n"


def test_bash_scripts_still_reject_unknown_arguments(tmp_path):
  p, _ = run_bash_copy("launch/tpu_pod.sh", tmp_path, "--bogus")
  assert p.returncode == 2 and "unknown argument --bogus" in p.stderr


def test_python_scripts_answer_help():
  scripts = python_scripts()
  with concurrent.futures.ThreadPoolExecutor(4) as pool:
    runs = dict(zip(scripts, pool.map(run_python, scripts)))
  for script, p in runs.items():
    assert p.returncode == 0, (script, p.stdout[-1000:], p.stderr[-2000:])
    assert says_usage(script, p.stdout), (script, p.stdout[:1000])


# The library's entry points (`python -m ...`), as the docs spell them.
ENTRY_POINTS = ["metalm_jax.main", "metalm_jax.export", "metalm_jax.convert",
                "metalm_jax.sweep", "metalm_jax.aot", "metalm_jax.data.build",
                "metalm_jax.data.tokenizer", "metalm_jax.demo"]


def test_entry_points_answer_help():
  def run(module):
    return subprocess.run([sys.executable, "-m", module, "--help"], cwd=ROOT,
                          env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True,
                          text=True, timeout=120)
  with concurrent.futures.ThreadPoolExecutor(4) as pool:
    runs = dict(zip(ENTRY_POINTS, pool.map(run, ENTRY_POINTS)))
  for module, p in runs.items():
    assert p.returncode == 0, (module, p.stdout[-1000:], p.stderr[-2000:])
    assert "usage" in p.stdout.lower() or "flags:" in p.stdout, (module, p.stdout[:500])
