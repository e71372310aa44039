"""One run per workdir: a lock file that works on local disks and gs://.

WORKDIR/run.lock.json = {"pid", "host", "started", "heartbeat", "token"}.
Process 0 of a run writes it before anything else touches the workdir,
refreshes `heartbeat` every `heartbeat_s` from a background thread and
deletes it when the run ends (also on errors). A second run on the same
workdir refuses with a message naming the first (host, pid, start time).

A lock is stale, and taken over with a warning, when its heartbeat is older
than `stale_after_s`, or when it names a process on this host that no longer
exists (a SIGKILLed run restarts at once). `force=True` (`main.py --force`)
takes any lock.

Object stores have no exclusive create: the taker writes its token, waits
`settle_s` and reads the file back; of two runs that start together, the one
whose token is not there refuses.
"""
from __future__ import annotations

import datetime
import json
import logging
import os
import socket
import threading
import time
import uuid
from typing import Any, Dict, Optional

from etils import epath
from metalm_jax import storage

LOCK_FILE = "run.lock.json"
STALE_AFTER_S = 600.0
HEARTBEAT_S = 60.0
SETTLE_S = 0.2


class WorkdirLockedError(RuntimeError):
  """Another run holds the workdir."""


def _now() -> float:
  return time.time()


def _iso(t: float) -> str:
  return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).isoformat(timespec="seconds")


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def describe(info: Dict[str, Any]) -> str:
  return (f"pid {info.get('pid')} on host {info.get('host')!r}, started "
          f"{_iso(info.get('started', 0))}, last heartbeat {_iso(info.get('heartbeat', 0))}")


class WorkdirLock:
  """`acquire()` / `release()` (or a context manager) on WORKDIR/run.lock.json."""

  def __init__(self, workdir, force: bool = False, stale_after_s: float = STALE_AFTER_S,
               heartbeat_s: float = HEARTBEAT_S, settle_s: float = SETTLE_S):
    self.path = epath.Path(workdir) / LOCK_FILE
    self.force, self.stale_after_s = force, stale_after_s
    self.heartbeat_s, self.settle_s = heartbeat_s, settle_s
    self.info = {"pid": os.getpid(), "host": socket.gethostname(), "started": _now(),
                 "token": uuid.uuid4().hex}
    self._stop = threading.Event()
    self._thread: Optional[threading.Thread] = None

  def read(self) -> Optional[Dict[str, Any]]:
    try:
      return json.loads(self.path.read_text())
    except FileNotFoundError:
      return None
    except (ValueError, OSError) as e:  # a torn write: treated as no lock, logged
      logging.warning("workdir lock %s is unreadable (%s); ignoring it", self.path, e)
      return None

  def _why_stale(self, other: Dict[str, Any]) -> Optional[str]:
    age = _now() - float(other.get("heartbeat", 0))
    if age > self.stale_after_s:
      return f"no heartbeat for {age:.0f} s (> {self.stale_after_s:.0f} s)"
    if other.get("host") == self.info["host"] and not _pid_alive(int(other.get("pid", -1))):
      return "its process no longer exists"
    return None

  def _write(self) -> None:
    # storage.write_text: whole-file replace (a local file is renamed over the
    # lock), so a reader never sees the lock empty mid-heartbeat and takes it.
    storage.write_text(self.path, json.dumps({**self.info, "heartbeat": _now()}, sort_keys=True))

  def acquire(self) -> "WorkdirLock":
    other = self.read()
    if other is not None:
      why = "--force" if self.force else self._why_stale(other)
      if why is None:
        raise WorkdirLockedError(
            f"workdir {self.path.parent} is in use by another run ({describe(other)}); "
            f"wait for it to end, or if it is gone, delete {self.path} or pass --force")
      logging.warning("taking over the workdir lock of %s: %s", describe(other), why)
    self._write()
    time.sleep(self.settle_s)
    now = self.read()
    if now is None or now.get("token") != self.info["token"]:
      raise WorkdirLockedError(
          f"workdir {self.path.parent} was locked at the same time by another run "
          f"({describe(now or {})})")
    self._thread = threading.Thread(target=self._beat, name="workdir-lock", daemon=True)
    self._thread.start()
    return self

  def _beat(self) -> None:
    while not self._stop.wait(self.heartbeat_s):
      try:
        cur = self.read()
        if cur is not None and cur.get("token") != self.info["token"]:
          logging.error("workdir lock %s was taken over by %s", self.path, describe(cur))
          return
        self._write()
      except OSError as e:  # a transient storage error: try again at the next beat
        logging.warning("workdir lock heartbeat failed: %s", e)

  def release(self) -> None:
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
      self._thread = None
      cur = self.read()
      if cur is not None and cur.get("token") == self.info["token"]:
        self.path.unlink()

  def __enter__(self):
    return self.acquire()

  def __exit__(self, *exc):
    self.release()


class _NoLock:
  def release(self) -> None:
    pass


def lock_for_run(workdir, force: bool = False):
  """Process 0 takes the lock; with several processes, all of them learn the
  outcome, so every process refuses together. Returns an object to release."""
  import jax
  import numpy as np
  from jax.experimental import multihost_utils
  lock, error = _NoLock(), ""
  if jax.process_index() == 0:
    try:
      with storage.errors(f"locking the workdir {workdir}"):
        try:
          lock = WorkdirLock(workdir, force=force).acquire()
        except WorkdirLockedError as e:
          error = str(e)
    except storage.StorageError as e:  # a read-only workdir, a bucket without access
      error = str(e)
      if jax.process_count() == 1:
        raise
  if jax.process_count() > 1:
    failed = bool(multihost_utils.broadcast_one_to_all(np.int32(bool(error))))
    if failed and not error:
      error = f"process 0 could not lock workdir {workdir} (see its log)"
  if error:
    raise WorkdirLockedError(error)
  return lock
