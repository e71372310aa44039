"""benchmarks/ab_step.py's plumbing: the ref commit unpacked as a tree, the
workers' flags pointed into their own tree. (The timing itself is a
benchmark: benchmarks/results/cpu_ab_skip_cond.json.)"""
import subprocess
import sys

import pytest

from benchmarks import ab_step


def test_worker_flags_point_into_the_workers_tree(monkeypatch, tmp_path):
  monkeypatch.setattr(sys, "argv", [
      "ab_step.py", "--ref=HEAD~1", "--config=configs/pretrain_vl.py:size=bench",
      "--config.model.decoder.vocab_size=32000", "--steps=10", "--json_out=/tmp/x.json",
      "--ours_xla_flags=--xla_cpu_enable_fast_math=true", "--tree=/elsewhere", "--noworker",
      "--ref_flags=--host_malloc=system --block=2"])
  argv = ab_step._worker_argv(str(tmp_path), "--host_malloc=system --block=2")
  assert argv[2:4] == ["--worker", f"--tree={tmp_path}"]
  assert f"--config={tmp_path}/configs/pretrain_vl.py:size=bench" in argv
  assert "--config.model.decoder.vocab_size=32000" in argv and "--steps=10" in argv
  assert not [a for a in argv if a.startswith(("--ref", "--json_out", "--ours_xla"))]
  assert argv[-2:] == ["--host_malloc=system", "--block=2"]  # that worker's own flags, last
  assert [a for a in argv if a.startswith(("--tree", "--worker", "--noworker"))] == [
      "--worker", f"--tree={tmp_path}"]


def test_ref_is_unpacked_at_its_commit(tmp_path):
  sha = ab_step._unpack("HEAD", str(tmp_path))
  head = subprocess.run(["git", "-C", ab_step.ROOT, "rev-parse", "HEAD"], capture_output=True,
                        text=True, check=True).stdout.strip()
  assert sha == head
  committed = subprocess.run(["git", "-C", ab_step.ROOT, "show", "HEAD:benchmarks/train_step.py"],
                             capture_output=True, text=True, check=True).stdout
  assert (tmp_path / "benchmarks" / "train_step.py").read_text() == committed
  with pytest.raises(SystemExit, match=r"--ref='no-such-ref': not a commit of "):
    ab_step._unpack("no-such-ref", str(tmp_path / "x"))
