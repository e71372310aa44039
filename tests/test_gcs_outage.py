"""The GCS emulator stopped in the middle of a run's checkpoint saves: the run
fails within a bounded time (config.checkpoint.gcs_request_retries, gcsfs's
own bounded retries) with an error naming the storage problem; once the
emulator is back, the restart ignores the half-written step and resumes from
the last complete one, and the metrics stay complete."""
import os
import time

import pytest

from metalm_jax.train import preemption
from tests import gcs_emulator
from tests import main_helpers as H

pytestmark = pytest.mark.integration

TOTAL = 16
FLAGS = [f"--config.total_steps={TOTAL}", "--config.checkpoint.every_steps=2",
         "--config.checkpoint.gcs_request_retries.max_retries=2",
         "--config.checkpoint.gcs_request_retries.initial_delay_s=0.1",
         "--config.checkpoint.gcs_request_retries.max_delay_s=0.5"]
# Generous: the bounded policies above end well within it; tensorstore's
# default (32 retries up to 32 s apart) would not.
BOUND_S = 240


def _committed(ckpts):
  if not os.path.isdir(ckpts):
    return []
  return sorted(int(s) for s in os.listdir(ckpts)
                if s.isdigit() and os.path.exists(os.path.join(ckpts, s, "commit_success.txt")))


def test_emulator_stopped_mid_save_then_restart_resumes(tmp_path):
  root = tmp_path / "gcs_root"
  emu = gcs_emulator.Emulator(root).start()
  try:
    bucket = emu.create_bucket("outage")
    work = f"{bucket}/run"
    ckpts = os.path.join(root, "outage", "run", "checkpoints")  # the emulator's files
    log = tmp_path / "run"
    data_dir = str(tmp_path / "data")

    def start():
      env = {**H.env(), **emu.env()}
      return H.start(work, data_dir, *FLAGS, log=f"{log}.log", environ=env)

    p = start()
    t0 = time.time()
    while not _committed(ckpts) or len(os.listdir(ckpts)) < 2:  # a save after a complete one
      assert p.poll() is None, H.tail(log)
      assert time.time() - t0 < 300, H.tail(log)
      time.sleep(0.05)
    emu.stop()
    rc = p.wait(BOUND_S)
    assert rc not in (0, preemption.PREEMPTED_EXIT_CODE), H.tail(log)
    out = H.tail(log, 20000)
    assert "storage error while" in out and "outage/run" in out, out[-3000:]

    emu.start()
    complete = _committed(ckpts)  # as the outage left them
    assert complete and complete[-1] < TOTAL
    p = start()
    assert p.wait(600) == 0, H.tail(log)
    resumed = [int(l.rsplit(" ", 1)[1]) for l in H.tail(log, 10 ** 7).splitlines()
               if l.startswith("resumed from")]
    assert resumed == [complete[-1]]
    steps = [r["step"] for r in _records(tmp_path, emu, work) if "loss" in r]
    assert steps == list(range(1, TOTAL + 1))
  finally:
    emu.stop()


def _records(tmp_path, emu, work):
  """metrics of the gs:// workdir, read in a subprocess pointed at this emulator."""
  import json
  import subprocess
  import sys
  code = ("import json,sys; from metalm_jax.train import metrics_log as m; "
          f"print(json.dumps(m.read_metrics({work!r})))")
  out = subprocess.run([sys.executable, "-c", code], cwd=H.ROOT, env={**H.env(), **emu.env()},
                       capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stderr[-2000:]
  return json.loads(out.stdout.strip().splitlines()[-1])
