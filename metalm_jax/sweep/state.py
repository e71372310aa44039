"""DIR/sweep.json: the sweep's spec (config, grid, fixed overrides) and its
runs with their status, rewritten whole at every change (DIR may be gs://).

A run is finished when its workdir holds final_metrics.json (written by the
trainer at the end of a run, run_files.py) for at least its
total_steps; that file, not the recorded status, decides what is skipped, so
runs finished elsewhere (commands printed for a cluster) count too.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Dict, List, Optional, Sequence, Tuple

from metalm_jax import config_names, storage
from metalm_jax.sweep import grid as grid_lib
from metalm_jax import run_files

SWEEP_FILE = "sweep.json"
CHECKPOINTS = run_files.CHECKPOINTS_DIR

# Statuses: pending (not started), running (started; interrupted if nothing
# runs it now), done, failed (exit status != 0), preempted (exit status 42).
PENDING, RUNNING, DONE, FAILED, PREEMPTED = "pending", "running", "done", "failed", "preempted"


def spec(config: str, axes: Sequence[grid_lib.Axis], fixed: Sequence[Tuple[str, str]]) -> Dict:
  """What identifies a sweep: refusing another spec for the same DIR keeps
  one grid per directory."""
  return {"config": config,
          "grid": [{"field": a.field, "values": list(a.values)} for a in axes],
          "fixed": [grid_lib.flag(f, v) for f, v in fixed]}


def axes_of(sweep: Dict) -> List[grid_lib.Axis]:
  return [grid_lib.Axis(a["field"], tuple(a["values"])) for a in sweep["grid"]]


def workdir(root: str, name: str) -> str:
  return storage.join(root, name)


def load(root: str) -> Optional[Dict[str, Any]]:
  """ROOT/sweep.json (None without one), its workdirs under ROOT as given now:
  a sweep directory copied elsewhere (gs:// -> local) reports from there."""
  path = storage.join(root, SWEEP_FILE)
  if not storage.exists(path):
    return None
  sweep = storage.read_json(path)
  # Renamed config fields under their new names (config_names.py), so a sweep
  # begun before a rename resumes with the same spec.
  sweep["fixed"] = [config_names.migrate_flag(f) for f in sweep.get("fixed", [])]
  for axis in sweep.get("grid", []):
    axis["field"] = config_names.new_field(axis["field"])
  sweep["root"] = storage.join(root)
  for run in sweep["runs"]:
    run["workdir"] = workdir(root, run["name"])
  return sweep


def save(root: str, sweep: Dict[str, Any]) -> str:
  return storage.write_json(storage.join(root, SWEEP_FILE), sweep)


def spec_changes(saved: Dict, now: Dict) -> List[str]:
  """One line per differing part of two specs."""
  return [f"{k}: {json.dumps(saved.get(k))} (in {SWEEP_FILE}) != {json.dumps(now[k])} (now)"
          for k in ("config", "grid", "fixed") if saved.get(k) != now[k]]


def check_same(root: str, now: Dict, force: bool) -> Optional[Dict]:
  """The saved sweep of ROOT (None if new). A different spec is an error
  unless `force`, which replaces it (finished runs of the same name are kept)."""
  saved = load(root)
  if saved is None:
    return None
  changes = spec_changes(saved, now)
  if changes and not force:
    raise grid_lib.SweepError(
        f"{storage.join(root, SWEEP_FILE)} holds another sweep:\n  " + "\n  ".join(changes) +
        "\nuse another --root, or --force to replace it (finished runs of the same name are "
        "kept; a changed field that their checkpoints depend on makes main refuse to resume)")
  return saved


def new(spec_: Dict, root: str, runs: Sequence[grid_lib.Run],
        saved: Optional[Dict] = None) -> Dict[str, Any]:
  """The sweep record: spec + runs; recorded statuses kept from `saved`."""
  before = {r["name"]: r for r in (saved or {}).get("runs", [])}
  rows = []
  for r in runs:
    old = before.get(r.name, {})
    rows.append({**dataclasses.asdict(r), "workdir": workdir(root, r.name),
                 "status": old.get("status", PENDING), "returncode": old.get("returncode"),
                 "seconds": old.get("seconds")})
  return {**spec_, "root": storage.join(root), "runs": rows}


def results(run_workdir: str) -> Optional[Dict[str, Any]]:
  return run_files.read_results(run_workdir)


def finished(run: Dict[str, Any]) -> bool:
  """final_metrics.json reaches the run's total_steps (an eval-only run,
  total_steps=0, has no step in it)."""
  res = results(run["workdir"])
  return res is not None and int(res.get("step", 0)) >= int(run["total_steps"])


def has_checkpoints(run: Dict[str, Any]) -> bool:
  return storage.exists(storage.join(run["workdir"], CHECKPOINTS))


def plan(root: str, config: str, grid: str, fixed_items: Sequence[str],
         force: bool = False) -> Dict[str, Any]:
  """The sweep record for these command-line values: the grid expanded and
  checked against the config and against ROOT/sweep.json; not yet saved."""
  axes = grid_lib.parse_grid(grid)
  fixed = grid_lib.parse_fixed(fixed_items)
  now = spec(config, axes, fixed)
  saved = check_same(root, now, force)
  return new(now, root, grid_lib.expand(config, axes, fixed), saved)
