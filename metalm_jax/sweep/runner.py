"""Running a sweep: one `python -m metalm_jax.main` per run, one after
another, or their shell commands for a cluster.

A run whose workdir holds its final metrics is skipped; any other run is
started again with the same command, and main resumes it from the latest
checkpoint in its workdir. Exit status 42 of a run (preempted, checkpoint
saved) stops the sweep with the same status, so a launcher that restarts on
42 resumes the sweep; any other failure is recorded and the sweep goes on.
"""
from __future__ import annotations

import shlex
import signal
import subprocess
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence

from metalm_jax.sweep import state as state_lib

# train/preemption.PREEMPTED_EXIT_CODE (named here without importing jax).
PREEMPTED = 42
RunFn = Callable[[List[str]], int]


def command(sweep: Dict, run: Dict, python: str = "python",
            launcher: Optional[Sequence[str]] = None) -> List[str]:
  """argv of one run: main (or `launcher ... --config --workdir -- overrides`,
  the launch/*.sh convention) with the fixed overrides, then the run's own."""
  overrides = [*sweep["fixed"], *(f"--config.{k}={v}" for k, v in run["overrides"].items())]
  head = [f"--config={sweep['config']}", f"--workdir={run['workdir']}"]
  if launcher:
    return [*launcher, *head, *(["--", *overrides] if overrides else [])]
  return [python, "-m", "metalm_jax.main", *head, *overrides]


def shell_commands(sweep: Dict, launcher: Optional[Sequence[str]] = None) -> List[str]:
  return [shlex.join(command(sweep, r, launcher=launcher)) for r in sweep["runs"]]


def run_subprocess(cmd: List[str]) -> int:
  """Runs `cmd` with this process's stdout/stderr; a SIGTERM sent to the sweep
  goes on to the run (main saves and exits 42)."""
  proc = subprocess.Popen(cmd)
  previous = signal.signal(signal.SIGTERM, lambda sig, _: proc.send_signal(sig))
  try:
    return proc.wait()
  finally:
    signal.signal(signal.SIGTERM, previous)


def _say(msg: str) -> None:
  print(f"[sweep] {msg}", flush=True)


def run_all(root: str, sweep: Dict, run_fn: RunFn = run_subprocess,
            python: str = sys.executable) -> int:
  """Runs every unfinished run of `sweep` in order, keeping ROOT/sweep.json
  current; returns 0 (all done), PREEMPTED, or 1 (some run failed)."""
  runs = sweep["runs"]
  for i, run in enumerate(runs, 1):
    tag = f"run {i}/{len(runs)} {run['name']}"
    if state_lib.finished(run):
      run["status"] = state_lib.DONE
      _say(f"{tag}: finished already (final metrics in its workdir), skipped")
      continue
    if state_lib.has_checkpoints(run):
      _say(f"{tag}: resuming from the checkpoints in {run['workdir']}")
    else:
      _say(f"{tag}: starting in {run['workdir']}")
    run.update(status=state_lib.RUNNING, returncode=None, seconds=None)
    state_lib.save(root, sweep)
    t0 = time.time()
    rc = run_fn(command(sweep, run, python))
    run["returncode"], run["seconds"] = rc, round(time.time() - t0, 1)
    if rc == PREEMPTED:
      run["status"] = state_lib.PREEMPTED
    elif rc == 0 and state_lib.finished(run):
      run["status"] = state_lib.DONE
    else:
      run["status"] = state_lib.FAILED
    state_lib.save(root, sweep)
    _say(f"{tag}: {run['status']} (exit status {rc}, {run['seconds']} s)")
    if rc == PREEMPTED:
      _say("preempted: start the same sweep command again to resume")
      return PREEMPTED
  failed = [r["name"] for r in runs if r["status"] != state_lib.DONE]
  if failed:
    _say(f"{len(failed)} of {len(runs)} runs not done: {', '.join(failed)}")
    return 1
  _say(f"all {len(runs)} runs done")
  return 0
