"""No save is lost on the way out, and SIGTERM means "preempted" from the
first moment: an exception right after an async save (a failing evaluator)
and Ctrl-C mid-save leave only complete checkpoints (no temporary step
directory); SIGTERM during the restore exits 42 with the lock released."""
import os
import signal
import subprocess
import sys
import time

import pytest

from tests import train_standin as S
from metalm_jax.train import checkpoint as ckpt_lib
from metalm_jax.train import eval_hooks
from metalm_jax.train import preemption
from metalm_jax.train import trainer as trainer_lib
from metalm_jax.train import workdir_lock
from tests import main_helpers as H

pytestmark = pytest.mark.integration


def _entries(w):
  return sorted(os.listdir(os.path.join(w, "checkpoints")))


def _restores(w, step):
  """The step restores, digests checked (onto the stand-in trainer's state)."""
  t = trainer_lib.Trainer(S.tiny_train_config(), w + "_r", data=S)
  ck = ckpt_lib.Checkpointer(w, S.tiny_train_config().checkpoint)
  try:
    _, got = ck.restore(ckpt_lib.with_shardings(t.abstract_state, t.shardings),
                        t._make_iter("train", 8, True, None), step=step)
  finally:
    ck.close()
  return got == step


def test_exception_right_after_an_async_save_keeps_the_save(tmp_path, monkeypatch):
  w = str(tmp_path / "w")
  get_state = ckpt_lib._IterSnapshot.get_state

  def slow(self):  # the save stays in flight for a second
    time.sleep(1.0)
    return get_state(self)

  def failing(self, params, step, *a):
    if step == 3:
      raise RuntimeError("evaluator failed at step 3")
    return {}
  monkeypatch.setattr(ckpt_lib._IterSnapshot, "get_state", slow)
  monkeypatch.setattr(eval_hooks.EvalHooks, "evaluate", failing)
  c = S.tiny_train_config(total_steps=6, eval_every=0)
  assert c.checkpoint.async_save
  with pytest.raises(RuntimeError, match="evaluator failed at step 3"):
    trainer_lib.train(c, w, data=S)
  assert _entries(w) == ["3"]  # complete, no *.orbax-checkpoint-tmp-* left
  assert not os.path.exists(os.path.join(w, workdir_lock.LOCK_FILE))
  monkeypatch.undo()
  assert _restores(w, 3)


def _start(w, hook, marker, *flags):
  e = H.env()
  e.update(METALM_TEST_HOOK=hook, METALM_TEST_MARKER=marker)
  log = open(w + ".log", "ab")
  return subprocess.Popen([sys.executable, "tests/standin_main.py",
                           "--config=tests/standin_config.py", f"--workdir={w}",
                           f"--config.compilation_cache_dir={S.CACHE_DIR}", *flags],
                          cwd=H.ROOT, env=e, stdout=log, stderr=subprocess.STDOUT)


def _wait_for(path, proc, timeout=240):
  t0 = time.time()
  while not os.path.exists(path):
    assert proc.poll() is None, f"exited {proc.returncode} early: {H.tail(proc.args[3][10:])}"
    assert time.time() - t0 < timeout, "marker not written in time"
    time.sleep(0.05)


def test_sigint_mid_save_leaves_only_complete_checkpoints(tmp_path):
  w = str(tmp_path / "w")
  marker = str(tmp_path / "saving")
  p = _start(w, "slow_save", marker)
  _wait_for(marker, p)
  p.send_signal(signal.SIGINT)
  rc = p.wait(120)
  assert rc not in (0, preemption.PREEMPTED_EXIT_CODE), H.tail(w)
  assert "KeyboardInterrupt" in H.tail(w, 10 ** 6)
  assert _entries(w) == ["3"], H.tail(w)  # the save in flight finished; no tmp dir
  assert not os.path.exists(os.path.join(w, workdir_lock.LOCK_FILE))
  assert _restores(w, 3)


def test_sigterm_during_restore_exits_42_and_releases_the_lock(tmp_path):
  w = str(tmp_path / "w")
  c = S.tiny_train_config(total_steps=3, eval_every=0)
  trainer_lib.train(c, w, data=S)
  before = _entries(w)
  marker = str(tmp_path / "restoring")
  p = _start(w, "slow_restore", marker)
  _wait_for(marker, p)
  p.send_signal(signal.SIGTERM)
  assert p.wait(120) == preemption.PREEMPTED_EXIT_CODE == 42, H.tail(w)
  log = H.tail(w, 10 ** 6)
  assert (f"preempted at step 3; nothing new to save (the checkpoints in "
          f"{os.path.join(w, 'checkpoints')} are as they were)") in log, log
  assert _entries(w) == before
  assert not os.path.exists(os.path.join(w, workdir_lock.LOCK_FILE))
