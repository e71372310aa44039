"""Through the real entry point and the real Grain pipeline: SIGTERM saves the
current step and exits with the "preempted, resume me" status; SIGKILL then
restart resumes bit-exactly (same losses at every step as an uninterrupted
run, data order included), on a local workdir and on gs:// (the GCS emulator),
where export, an eval-only run and the Predictor then read the workdir."""
import os
import time

import numpy as np
import pytest

from metalm_jax import storage
from metalm_jax.train import checkpoint as ckpt_lib
from metalm_jax.train import metrics as metrics_lib
from metalm_jax.train import preemption
from tests import main_helpers as H

pytestmark = pytest.mark.integration

STEPS = ["--config.total_steps=24", "--config.checkpoint.every_steps=5"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data_dir):
  """Losses of an uninterrupted local run (shared by the tests here)."""
  ref = tmp_path_factory.mktemp("ref") / "uninterrupted"
  H.run(ref, data_dir, *STEPS)
  want = H.losses(ref)
  assert sorted(want) == list(range(1, 25))
  return want


def _ckpt_steps(workdir):
  d = storage.path(workdir) / ckpt_lib.CKPT_SUBDIR
  return sorted(int(x.name) for x in d.iterdir() if x.name.isdigit())


def _committed_steps(workdir):
  """Steps whose save finished: on gs:// Orbax marks them with commit_success.txt
  (no atomic rename there); a step dir without it is half written."""
  storage.refresh(workdir)
  return [s for s in _ckpt_steps(workdir)
          if (storage.path(workdir) / ckpt_lib.CKPT_SUBDIR / str(s)
              / "commit_success.txt").exists()]


def _wait_committed(proc, workdir, timeout=300):
  t0 = time.time()
  while time.time() - t0 < timeout:
    try:
      done = _committed_steps(workdir)
    except FileNotFoundError:
      done = []
    if done:
      return done
    assert proc.poll() is None, f"run ended (rc={proc.returncode}) before a checkpoint"
    time.sleep(0.2)
  pytest.fail("no complete checkpoint in time")


def _resumed(work):
  log = H.tail(work, 10 ** 6)
  return [int(line.rsplit(" ", 1)[1]) for line in log.splitlines()
          if line.startswith("resumed from")]  # the console line, not the log record


def _steps_logged(work):
  return [r["step"] for r in metrics_lib.read_metrics(str(work)) if "loss" in r]


def test_sigterm_then_sigkill_then_resume_is_bit_exact(tmp_path, data_dir, reference):
  work = tmp_path / "interrupted"
  # 1. SIGTERM mid-run: saves the step it stopped at, exits "preempted, resume me";
  #    no final line, no final_metrics.json.
  p = H.start(work, data_dir, *STEPS)
  H.wait_for_step(p, work, 3)
  assert H.kill(p, H.SIGTERM) == preemption.PREEMPTED_EXIT_CODE == 42, H.tail(work)
  stopped = max(H.losses(work))
  assert 3 <= stopped < 24
  assert _ckpt_steps(work)[-1] == stopped
  assert "final:" not in H.tail(work, 10 ** 6)
  assert f"preempted at step {stopped}" in H.tail(work, 10 ** 6)
  assert not (work / "final_metrics.json").exists()
  # 2. Restart resumes there; SIGKILL a few steps later (no chance to save).
  p = H.start(work, data_dir, *STEPS)
  H.wait_for_step(p, work, stopped + 7)
  H.kill(p, H.SIGKILL)
  assert f"\nresumed from {os.path.join(str(work), 'checkpoints')} at step {stopped}\n" in H.tail(
      work, 10 ** 6)
  killed_at = max(H.losses(work))
  # 3. Restart from the last complete checkpoint and finish.
  H.run(work, data_dir, *STEPS)
  resumed = _resumed(work)
  # The latest complete checkpoint (an async save cut by SIGKILL does not count).
  assert len(resumed) == 2 and stopped <= resumed[1] <= killed_at
  assert _steps_logged(work) == list(range(1, 25))  # none lost, none twice
  assert H.losses(work) == reference  # bit-exact: the same float32 values at every step
  assert (work / "final_metrics.json").exists()
  # The runs kept their step's host buffers between steps (metalm_jax/host_memory.py,
  # applied by main before the backend started): bit-exact all the same.
  assert H.tail(work, 10 ** 6).count("host_malloc=keep") == 3


def test_gcs_workdir_sigkill_resume_export_eval_predictor(tmp_path, data_dir, reference,
                                                         gcs_bucket):
  work = gcs_bucket + "/run"
  log = tmp_path / "gcs_run"  # console logs stay local
  p = H.start(work, data_dir, *STEPS, log=f"{log}.log")
  committed = _wait_committed(p, work)
  H.kill(p, H.SIGKILL)
  assert max(H.losses(work)) < 24  # killed mid-run
  H.run(work, data_dir, *STEPS, log=f"{log}.log")
  resumed = _resumed(log)
  assert len(resumed) == 1 and resumed[0] >= max(committed), H.tail(log)
  assert _steps_logged(work) == list(range(1, 25))
  assert H.losses(work) == reference  # bit-exact on CPU, through gs://
  merged = metrics_lib.read_jsonl(work + "/metrics.jsonl")  # the one-file view
  assert [r["step"] for r in merged if "loss" in r] == list(range(1, 25))
  assert storage.read_json(work + "/config.json")["data"]["tokenizer"] == "tokenizer.model"
  for f in ("final_metrics.json", "loss_curve.png", "tokenizer.model"):
    assert storage.exists(f"{work}/{f}"), f
  assert list((storage.path(work) / "tensorboard").iterdir())

  # Export from the gs:// workdir into gs://, then the Predictor reads it there.
  out = gcs_bucket + "/export"
  H.run_module(tmp_path / "export", "metalm_jax.export", f"--workdir={work}", f"--out={out}",
               "--seq_len=32")
  from metalm_jax.convert.predictor import Predictor
  pred = Predictor(out, max_new_tokens=3)
  rng = np.random.default_rng(0)
  image = rng.uniform(size=(32, 32, 3)).astype(np.float32)  # raw pixels in [0, 1]
  caps = pred.caption([image])
  assert len(caps) == 1 and isinstance(caps[0], str)
  # The gs:// workdir itself serves the same (params of its latest step).
  assert Predictor(work, max_new_tokens=3).caption([image]) == caps

  # An eval-only run initialised from the gs:// workdir, writing to another one.
  ev = gcs_bucket + "/eval"
  H.run(ev, data_dir, "--config.total_steps=0", f"--config.init_from={work}",
        "--config.eval_loss.num_batches=1", log=f"{tmp_path / 'eval'}.log")
  res = storage.read_json(ev + "/final_metrics.json")
  final = storage.read_json(work + "/final_metrics.json")
  assert np.isfinite(res["eval_loss"]) and res["eval_tokens"] > 0
  assert res["eval_loss"] < reference[1]  # the trained params, not a fresh init
  assert final["step"] == 24
