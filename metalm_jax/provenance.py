"""Provenance of a benchmark result: which code, packages and machine state
produced it. Every result file under benchmarks/results/ carries it under
the key "provenance":

  commit, dirty     `git rev-parse HEAD` of the checkout, and whether tracked
                    files differ from it ("unknown" / None outside a git
                    checkout); untracked files do not count
  versions          jax, jaxlib, flax, optax, orbax-checkpoint as installed
  python, os        Python version, platform.platform() (no host name)
  platform, device_kind, device_count, process_count
                    jax's backend and devices
  argv              the command line (sys.argv)
  started_utc, finished_utc            ISO 8601 dates, UTC
  load_average_start, load_average_end os.getloadavg() (1, 5, 15 min)
  cpu_count         os.cpu_count()

    begun = provenance.start()             # first thing in main()
    ...
    provenance.write_json(path, result, begun)

Importing this module imports neither jax nor any device. The devices are read
in this process (devices="here": for a script that uses jax itself), or in a
short child process (devices="subprocess": for a script whose work runs in
other processes, so that this one never opens an accelerator).

    python -m metalm_jax.provenance        # prints the dict as JSON
"""
from __future__ import annotations

import dataclasses
import datetime
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
from typing import Any, Dict, Mapping, Optional, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint")
UNKNOWN = "unknown"
KEY = "provenance"

_DEVICES_SCRIPT = (
    "import json, jax; d = jax.devices(); print(json.dumps(dict(platform=d[0].platform, "
    "device_kind=d[0].device_kind, device_count=len(d), process_count=jax.process_count())))")


@dataclasses.dataclass(frozen=True)
class Start:
  """What is recorded when a run begins."""
  utc: str
  load_average: Tuple[float, float, float]


def _utc_now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _load_average() -> Tuple[float, float, float]:
  return tuple(round(x, 2) for x in os.getloadavg())


def start() -> Start:
  return Start(_utc_now(), _load_average())


def _git(root: str, *args: str) -> Optional[str]:
  try:
    p = subprocess.run(["git", "-C", root, *args], capture_output=True, text=True, timeout=30)
  except (OSError, subprocess.TimeoutExpired):
    return None
  return p.stdout if p.returncode == 0 else None


def git_state(root: str = ROOT) -> Dict[str, Any]:
  """{"commit": sha or "unknown", "dirty": bool, or None when unknown}."""
  head = _git(root, "rev-parse", "HEAD")
  if head is None:
    return {"commit": UNKNOWN, "dirty": None}
  status = _git(root, "status", "--porcelain", "--untracked-files=no")
  return {"commit": head.strip(), "dirty": None if status is None else bool(status.strip())}


def versions(packages=PACKAGES) -> Dict[str, str]:
  out = {}
  for name in packages:
    try:
      out[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      out[name] = "not installed"
  return out


def devices_here() -> Dict[str, Any]:
  import jax
  d = jax.devices()
  return {"platform": d[0].platform, "device_kind": d[0].device_kind, "device_count": len(d),
          "process_count": jax.process_count()}


def devices_in_subprocess(timeout: float = 300) -> Dict[str, Any]:
  """jax's devices as a fresh process with this environment sees them; it
  neither preallocates nor keeps GPU memory."""
  env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false", TF_CPP_MIN_LOG_LEVEL="3")
  try:
    p = subprocess.run([sys.executable, "-c", _DEVICES_SCRIPT], capture_output=True, text=True,
                       env=env, timeout=timeout)
    if p.returncode == 0:
      return json.loads(p.stdout.strip().splitlines()[-1])
    why = (p.stderr.strip().splitlines() or [f"exit {p.returncode}"])[-1]
  except (OSError, subprocess.TimeoutExpired, ValueError, IndexError) as e:
    why = f"{type(e).__name__}: {e}"
  return {"platform": UNKNOWN, "device_kind": UNKNOWN, "device_count": None,
          "process_count": None, "devices_error": why[:500]}


def collect(begun: Optional[Start] = None, devices: str = "here",
            root: str = ROOT) -> Dict[str, Any]:
  """The provenance dict (module docstring); `begun` is what start() recorded
  at the beginning of the run (default: now)."""
  if devices not in ("here", "subprocess"):
    raise ValueError(f"devices={devices!r}: 'here' or 'subprocess'")
  begun = begun or start()
  dev = devices_here() if devices == "here" else devices_in_subprocess()
  return {
      **git_state(root),
      "versions": versions(),
      "python": platform.python_version(),
      "os": platform.platform(),
      **dev,
      "argv": list(sys.argv),
      "started_utc": begun.utc,
      "finished_utc": _utc_now(),
      "load_average_start": list(begun.load_average),
      "load_average_end": list(_load_average()),
      "cpu_count": os.cpu_count(),
  }


def attach(result: Mapping[str, Any], begun: Optional[Start] = None,
           devices: str = "here") -> Dict[str, Any]:
  """`result` with collect()'s dict under "provenance"."""
  if KEY in result:
    raise ValueError(f"the result already has a {KEY!r} key")
  return {**result, KEY: collect(begun, devices)}


def write_json(path: str, result: Mapping[str, Any], begun: Optional[Start] = None,
               devices: str = "here") -> Dict[str, Any]:
  """Writes attach(result, ...) to the local file `path` (indented JSON); returns it."""
  out = attach(result, begun, devices)
  with open(path, "w") as f:
    json.dump(out, f, indent=2)
    f.write("\n")
  return out


if __name__ == "__main__":
  print(json.dumps(collect(), indent=2))
