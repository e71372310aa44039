"""One run per workdir: a second run refuses naming the first; stale locks
(dead process, old heartbeat) are taken over; --force takes any lock."""
import json
import os
import socket
import subprocess
import sys
import time

import pytest

from tests import train_standin as S
from metalm_jax.train import trainer as trainer_lib
from metalm_jax.train import workdir_lock as L

HOLD = """
import sys, time
from metalm_jax.train import workdir_lock as L
lock = L.WorkdirLock(sys.argv[1], heartbeat_s=0.2).acquire()
print("locked", flush=True)
time.sleep(120)
"""


def _holder(workdir):
  p = subprocess.Popen([sys.executable, "-c", HOLD, str(workdir)], stdout=subprocess.PIPE,
                       text=True, cwd=os.path.dirname(os.path.dirname(__file__)))
  assert p.stdout.readline().strip() == "locked"
  return p


@pytest.mark.integration
def test_second_run_refuses_naming_the_first_then_takes_a_dead_lock(tmp_path):
  w = tmp_path / "w"
  p = _holder(w)
  try:
    with pytest.raises(L.WorkdirLockedError,
                       match=rf"in use by another run \(pid {p.pid} on host "
                             rf"'{socket.gethostname()}', started "):
      L.WorkdirLock(w).acquire()
    # The whole trainer refuses before it writes metrics, configs or checkpoints.
    with pytest.raises(L.WorkdirLockedError, match=rf"pid {p.pid}"):
      trainer_lib.train(S.tiny_train_config(), str(w), data=S)
    # (the holder's heartbeat may be mid-replace: its temporary file is its own)
    assert {n for n in os.listdir(w) if not n.startswith(f".{L.LOCK_FILE}.tmp")} <= {
        L.LOCK_FILE, "tensorboard"}
    # Its heartbeat moves on while it runs.
    t0 = json.loads((w / L.LOCK_FILE).read_text())["heartbeat"]
    time.sleep(0.6)
    assert json.loads((w / L.LOCK_FILE).read_text())["heartbeat"] > t0
  finally:
    p.kill()
    p.wait()
  # SIGKILLed: its process is gone, so the lock is stale at once.
  with L.WorkdirLock(w) as lock:
    assert json.loads((w / L.LOCK_FILE).read_text())["token"] == lock.info["token"]
  assert not (w / L.LOCK_FILE).exists()  # released


def test_other_host_lock_stale_after_timeout_or_forced(tmp_path):
  w = tmp_path / "w"
  w.mkdir()
  other = {"pid": 1, "host": "elsewhere-7", "started": time.time() - 50,
           "heartbeat": time.time() - 30, "token": "x"}
  (w / L.LOCK_FILE).write_text(json.dumps(other))
  with pytest.raises(L.WorkdirLockedError, match=r"pid 1 on host 'elsewhere-7'"):
    L.WorkdirLock(w, stale_after_s=60).acquire()
  with L.WorkdirLock(w, stale_after_s=10):  # 30 s without a heartbeat: stale
    pass
  (w / L.LOCK_FILE).write_text(json.dumps(other))
  with L.WorkdirLock(w, force=True, stale_after_s=60) as lock:
    assert json.loads((w / L.LOCK_FILE).read_text())["token"] == lock.info["token"]


def test_other_hosts_live_lock_holds_even_if_its_pid_is_free_here(tmp_path):
  """Another host's pid says nothing about this host's processes: only the
  heartbeat decides (two hosts must never train into one gs:// workdir)."""
  w = tmp_path / "w"
  w.mkdir()
  p = subprocess.Popen([sys.executable, "-c", "pass"])
  p.wait()  # a pid that is free here now
  assert not L._pid_alive(p.pid)
  other = {"pid": p.pid, "host": "elsewhere-7", "started": time.time() - 50,
           "heartbeat": time.time() - 5, "token": "x"}
  (w / L.LOCK_FILE).write_text(json.dumps(other))
  with pytest.raises(L.WorkdirLockedError, match=rf"pid {p.pid} on host 'elsewhere-7'"):
    L.WorkdirLock(w).acquire()
  # The same record from this host: the process is gone, the lock is stale.
  (w / L.LOCK_FILE).write_text(json.dumps({**other, "host": socket.gethostname()}))
  with L.WorkdirLock(w):
    pass


def test_a_heartbeat_never_leaves_the_lock_empty(tmp_path):
  """The heartbeat replaces the lock file whole: with it beating every 0.5 ms,
  no read sees a torn file and no second run takes the live lock. (Written in
  place, truncate then write, 19% of such reads saw an empty file, which a
  second run read as "no lock" and took over; the suite caught it once at
  the 0.2 s heartbeat of the test above.)"""
  holder = L.WorkdirLock(tmp_path, heartbeat_s=0.0005).acquire()
  try:
    reads, took, t0 = 0, 0, time.time()
    while time.time() - t0 < 1.0:
      assert json.loads(holder.path.read_text())["token"] == holder.info["token"]
      try:
        L.WorkdirLock(tmp_path, settle_s=0.0).acquire().release()
        took += 1
      except L.WorkdirLockedError:
        pass
      reads += 1
    assert took == 0 and reads > 100
  finally:
    holder.release()
