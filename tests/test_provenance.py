"""Provenance of benchmark results (metalm_jax/provenance.py): the keys, the
commit and dirty flag against git itself (this checkout and throw-away
repositories), versions, load averages, the JSON writer, and one benchmark
(benchmarks/train_step.py --json_out) that writes it."""
import datetime
import importlib.metadata
import json
import os
import pathlib
import socket
import subprocess
import sys

import jax
import pytest

from metalm_jax import provenance

ROOT = pathlib.Path(__file__).resolve().parent.parent
KEYS = {"commit", "dirty", "versions", "python", "os", "platform", "device_kind", "device_count",
        "process_count", "argv", "started_utc", "finished_utc", "load_average_start",
        "load_average_end", "cpu_count"}


def git(repo, *args):
  return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                        text=True).stdout.strip()


@pytest.fixture
def repo(tmp_path):
  r = tmp_path / "repo"
  r.mkdir()
  git(r, "init", "-q")
  (r / "a.txt").write_text("one\n")
  git(r, "add", "a.txt")
  git(r, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "first")
  return r


def test_keys_and_this_checkout():
  p = provenance.collect()
  assert set(p) == KEYS
  assert p["commit"] == git(ROOT, "rev-parse", "HEAD") and len(p["commit"]) == 40
  changed = git(ROOT, "status", "--porcelain", "--untracked-files=no")
  assert p["dirty"] is bool(changed)
  assert p["versions"] == {n: importlib.metadata.version(n) for n in provenance.PACKAGES}
  assert p["versions"]["jax"] == jax.__version__
  assert (p["platform"], p["device_count"], p["process_count"]) == ("cpu", 8, 1)
  assert p["device_kind"] == jax.devices()[0].device_kind
  assert p["argv"] == sys.argv and p["cpu_count"] == os.cpu_count()
  for k in ("load_average_start", "load_average_end"):
    assert len(p[k]) == 3 and all(isinstance(x, float) and x >= 0 for x in p[k])
  host = socket.gethostname()
  if len(host) >= 6:  # short names could match by accident
    assert host not in json.dumps({k: v for k, v in p.items() if k != "argv"})


def test_dirty_flag_in_a_throwaway_repo(repo, tmp_path):
  clean = provenance.git_state(str(repo))
  assert clean == {"commit": git(repo, "rev-parse", "HEAD"), "dirty": False}
  (repo / "notes.txt").write_text("untracked\n")  # untracked files do not count
  assert provenance.git_state(str(repo))["dirty"] is False
  (repo / "a.txt").write_text("two\n")
  assert provenance.git_state(str(repo)) == {"commit": clean["commit"], "dirty": True}
  git(repo, "add", "a.txt")  # staged but not committed: still dirty
  assert provenance.git_state(str(repo))["dirty"] is True
  elsewhere = tmp_path / "not_a_repo"
  elsewhere.mkdir()
  assert provenance.git_state(str(elsewhere)) == {"commit": "unknown", "dirty": None}
  assert provenance.collect(root=str(elsewhere))["commit"] == "unknown"


def test_start_and_end_of_the_run():
  begun = provenance.Start("2026-01-02T03:04:05+00:00", (9.5, 8.5, 7.5))
  p = provenance.collect(begun)
  assert p["started_utc"] == "2026-01-02T03:04:05+00:00"
  assert p["load_average_start"] == [9.5, 8.5, 7.5]
  end = datetime.datetime.fromisoformat(p["finished_utc"])
  assert end.utcoffset() == datetime.timedelta(0)
  assert abs(datetime.datetime.now(datetime.timezone.utc) - end).total_seconds() < 60
  now = provenance.start()
  assert datetime.datetime.fromisoformat(now.utc) <= datetime.datetime.fromisoformat(
      provenance.collect(now)["finished_utc"])


def test_write_json_merges_the_provenance_key(tmp_path):
  path = tmp_path / "r.json"
  out = provenance.write_json(str(path), {"mfu": 0.25, "rows": [1, 2]})
  on_disk = json.loads(path.read_text())
  assert on_disk == out and on_disk["mfu"] == 0.25 and on_disk["rows"] == [1, 2]
  assert set(on_disk["provenance"]) == KEYS
  with pytest.raises(ValueError, match="already has a 'provenance' key"):
    provenance.write_json(str(path), on_disk)
  with pytest.raises(ValueError, match="devices='nowhere'"):
    provenance.collect(devices="nowhere")


def test_devices_from_a_child_process(monkeypatch):
  """A script whose work runs in other processes reads the devices in a child
  (this environment: conftest's 8 CPU devices)."""
  p = provenance.collect(devices="subprocess")
  assert (p["platform"], p["device_count"], p["process_count"]) == ("cpu", 8, 1)
  monkeypatch.setattr(provenance, "_DEVICES_SCRIPT", "raise SystemExit('no backend here')")
  failed = provenance.devices_in_subprocess()
  assert failed["platform"] == "unknown" and failed["device_count"] is None
  assert "no backend here" in failed["devices_error"]


@pytest.mark.integration
def test_train_step_benchmark_writes_provenance(tmp_path):
  out = tmp_path / "step.json"
  env = dict(os.environ, JAX_PLATFORMS="cpu",  # one device, conftest's fast compile flags
             XLA_FLAGS="--xla_backend_optimization_level=0 "
                       "--xla_llvm_disable_expensive_passes=true")
  cmd = [sys.executable, "benchmarks/train_step.py", "--config=configs/pretrain_vl.py:size=tiny",
         "--batch_size=2", "--seq_len=48", "--steps=1", "--warmup=0", "--matmul_size=64",
         f"--json_out={out}"]
  p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
  r = json.loads(out.read_text())
  assert r["provenance"]["argv"][1:] == cmd[2:] and r["provenance"]["device_count"] == 1
  assert r["provenance"]["commit"] == git(ROOT, "rev-parse", "HEAD")
  assert r["mfu_peak_source"] == "measured float32 matmul on cpu"
  assert r["mfu_peak_tflops"] == r["matmul_peak_tflops"] > 0
  assert 0 < r["mfu"] == pytest.approx(r["achieved_tflops"] / r["mfu_peak_tflops"])
  assert "MFU peak:" in p.stdout and "measured float32 matmul on cpu" in p.stdout
