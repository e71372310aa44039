"""A divergence never costs the last good checkpoint: a loss spike (above
loss_spike.factor x the running median) is skipped like a non-finite step,
skipped steps are not saved, the last good checkpoint is kept from eviction,
and when the guard stops the run it moves aside the checkpoints whose params led
to the divergence and names the step a rerun resumes from; that rerun, at a
sane learning rate, trains with finite losses. Both cases: a
huge lr from scratch, and a good run pushed to a huge lr."""
import os

import jax.numpy as jnp
import numpy as np
import pytest

from tests import train_standin as S
from metalm_jax.train import checkpoint as ckpt_lib
from metalm_jax.train import divergence
from metalm_jax.train import metrics as metrics_lib
from metalm_jax.train import trainer as trainer_lib


def _cfg(lr, total, **kw):
  c = S.tiny_train_config(total_steps=total, eval_every=0, **kw)
  c.optimizer.lr = lr
  c.checkpoint.update(every_steps=1, keep=3)
  return c


def _losses(w):
  return {r["step"]: r["loss"] for r in metrics_lib.read_metrics(w) if "loss" in r}


def _steps(w):
  return sorted(int(d) for d in os.listdir(os.path.join(w, "checkpoints")) if d.isdigit())


@pytest.mark.integration
def test_huge_lr_from_scratch_then_a_sane_restart_trains(tmp_path):
  w = str(tmp_path / "w")
  c = _cfg(1e6, 8)
  c.checkpoint.async_save = False
  with pytest.raises(FloatingPointError) as e:
    trainer_lib.train(c, w, data=S)
  msg = str(e.value)
  assert "skipped steps in a row" in msg and "the first at step 2," in msg, msg
  # Step 1's update (at lr 5e5) gave step 2's loss: nothing before it is good.
  aside = os.path.join(w, "checkpoints_diverged")
  assert ("No checkpoint from before step 1 is kept, so a rerun starts from step 0; moved "
          f"checkpoint(s) 1 to {aside} (saved after it: their params led to step 2). Rerun with "
          "a lower learning rate: the same command with --config.optimizer.lr=100000") in msg, msg
  assert _steps(w) == [] and os.listdir(aside) == ["1"]  # set aside, not deleted
  assert not [d for d in os.listdir(os.path.join(w, "checkpoints")) if "tmp" in d]
  res = trainer_lib.train(_cfg(1e-3, 8), w, data=S)
  losses = _losses(w)
  assert res["step"] == 8 and sorted(losses) == list(range(1, 9))
  assert all(np.isfinite(v) and v < 10 for v in losses.values()), losses


@pytest.mark.integration
def test_good_run_pushed_to_huge_lr_keeps_its_last_good_step(tmp_path):
  w = str(tmp_path / "w")
  trainer_lib.train(_cfg(3e-3, 4), w, data=S)
  good = _losses(w)
  with pytest.raises(FloatingPointError) as e:
    trainer_lib.train(_cfg(1e9, 10), w, data=S)  # async saves (the default)
  msg = str(e.value)
  # Step 5 (loss from step 4's params) trains; its update blows up the params,
  # step 6 is skipped (a finite 3e18 loss, a NaN gradient): a rerun resumes
  # from 4; 5 is moved aside.
  assert "the first at step 6," in msg, msg
  aside = os.path.join(w, "checkpoints_diverged")
  assert (f"A rerun resumes from step 4 ({os.path.join(w, 'checkpoints')}/4); moved "
          f"checkpoint(s) 5 to {aside} (saved after it: their params led to step 6)") in msg, msg
  assert _steps(w) == [3, 4] and os.listdir(aside) == ["5"]
  res = trainer_lib.train(_cfg(3e-3, 8), w, data=S)
  losses = _losses(w)
  assert res["step"] == 8 and sorted(losses) == list(range(1, 9))
  assert all(losses[s] == good[s] for s in range(1, 5))
  assert all(np.isfinite(v) and v < 10 for v in losses.values()), losses


class _FakeCkpt:
  directory = "/ckpt"

  def __init__(self, steps):
    self.steps, self.protected, self.deleted = list(steps), set(), []

  def all_steps(self):
    return sorted(self.steps)

  def wait(self):
    pass

  def set_aside(self, s):
    self.steps.remove(s)
    self.deleted.append(s)
    return "/aside"


def test_tracker_protects_the_last_good_step_until_training_moves_on():
  ck = _FakeCkpt([4, 8, 12])
  t = divergence.Tracker(ck, keep=2, lr=1e-3, command=["main.py", "--workdir=/w",
                                                      "--config.optimizer.lr=1e-3"])
  t.skipped(14, first_of_run=True)   # 13's params gave 14's loss: 12 is the last good one
  assert ck.protected == {12}
  t.skipped(15, first_of_run=False)
  ck.steps.append(16)
  t.saved(16)
  assert ck.protected == {12}        # one save since the last skip: kept
  ck.steps.append(20)
  t.saved(20)
  assert ck.protected == set()       # `keep` saves since: training has moved on
  t.skipped(21, first_of_run=True)   # the last good step is now <= 19
  assert ck.protected == {16}


def test_tracker_stop_sets_aside_what_followed_and_names_the_rerun():
  from metalm_jax.train import nonfinite
  ck = _FakeCkpt([3, 6, 7])
  t = divergence.Tracker(ck, keep=3, lr=2e-3, command=["main.py", "--workdir=/w",
                                                      "--config.optimizer.lr=2e-3"])
  msg = t.stop(nonfinite.Diverged("3 skipped", step=10, first_bad=8, in_a_row=3))
  assert ck.deleted == [7] and ck.all_steps() == [3, 6]
  assert msg == ("3 skipped. A rerun resumes from step 6 (/ckpt/6); moved checkpoint(s) 7 to "
                 "/aside (saved after it: their params led to step 8). Rerun with a lower learning "
                 "rate: python -m metalm_jax.main --workdir=/w --config.optimizer.lr=0.0002")


def test_protected_step_survives_eviction(tmp_path):
  c = S.tiny_train_config()
  c.checkpoint.update(keep=2, async_save=False)
  ck = ckpt_lib.Checkpointer(str(tmp_path), c.checkpoint)

  class It:
    def get_state(self):
      return {"next_index": 0}
  state = {"params": {"w": jnp.ones(3)}}
  ck.protected.add(1)
  for s in range(1, 6):
    ck.save(s, state, It())
  assert ck.all_steps() == [1, 4, 5]
  ck.protected.clear()
  ck.save(6, state, It())
  assert ck.all_steps() == [5, 6]
  ck.close()
