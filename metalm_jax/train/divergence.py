"""What a divergence may cost: never the last good checkpoint.

The loss of step s+1 is computed with the params saved at step s, so when
step F is the first of a run of skipped steps (non-finite or spiking loss:
train/nonfinite.py), the checkpoint at F-1 holds the params that produced it,
and the last good checkpoint is the latest one at a step <= F-2.

`Tracker` (one per training loop, over a train/checkpoint.Checkpointer):
  - `skipped(step)` at every skipped step: at the first one of a run,
    protects the last good checkpoint from eviction (Checkpointer.protected);
    skipped steps are not saved (the trainer asks `may_save`);
  - `saved(step)`: after `keep` checkpoints saved since the last skipped step,
    training has moved on and the protection is released;
  - `stop(diverged)` when the guard stops the run: moves aside the checkpoints
    after the last good one (their params led to the divergence) and returns
    the message naming the step a rerun resumes from and the command.
"""
from __future__ import annotations

import logging
import shlex
from typing import List, Optional, Sequence

LR_FLAG = "--config.optimizer.lr="


def restart_command(argv: Optional[Sequence[str]], lr: float) -> str:
  """The entry point's command with a tenth of the learning rate."""
  new = f"{LR_FLAG}{lr / 10:g}"
  if not argv:
    return f"the same command with {new}"
  args = [a for a in argv[1:] if not a.startswith(LR_FLAG)]
  return shlex.join(["python", "-m", "metalm_jax.main", *args, new])


class Tracker:

  def __init__(self, ckpt, keep: int, lr: float, command: Optional[Sequence[str]] = None):
    self.ckpt, self.keep, self.lr, self.command = ckpt, int(keep), float(lr), command
    self.saves_since_skip: Optional[int] = None  # None: no skipped step yet

  def good_step(self, first_bad: int) -> Optional[int]:
    """The latest kept checkpoint at a step <= first_bad - 2 (None: none)."""
    good = [s for s in self.ckpt.all_steps() if s <= first_bad - 2]
    return good[-1] if good else None

  def skipped(self, step: int, first_of_run: bool) -> None:
    self.saves_since_skip = 0
    if first_of_run:
      good = self.good_step(step)
      if good is not None and good not in self.ckpt.protected:
        logging.warning("step %d skipped: checkpoint %d is kept until training has moved on",
                        step, good)
        self.ckpt.protected.add(good)

  def saved(self, step: int) -> None:
    if self.saves_since_skip is None:
      return
    self.saves_since_skip += 1
    if self.saves_since_skip >= self.keep and self.ckpt.protected:
      logging.info("%d checkpoints since the last skipped step: releasing %s", self.keep,
                   sorted(self.ckpt.protected))
      self.ckpt.protected.clear()

  def stop(self, diverged) -> str:
    """Moves the checkpoints after the last good one aside (Checkpointer.set_aside:
    a restart cannot resume from them, nothing is deleted); the full message."""
    self.ckpt.wait()
    good = self.good_step(diverged.first_bad)
    bad: List[int] = [s for s in self.ckpt.all_steps() if good is None or s > good]
    aside = [self.ckpt.set_aside(s) for s in bad]
    cmd = restart_command(self.command, self.lr)
    deleted = (f"; moved checkpoint(s) {', '.join(map(str, bad))} to {aside[0]} (saved after "
               f"it: their params led to step {diverged.first_bad})" if bad else "")
    if good is None:
      where = (f"no checkpoint from before step {diverged.first_bad - 1} is kept, so a rerun "
               f"starts from step 0{deleted}")
    else:
      where = (f"a rerun resumes from step {good} "
               f"({self.ckpt.directory}/{good}){deleted}")
    return f"{diverged}. {where[0].upper()}{where[1:]}. Rerun with a lower learning rate: {cmd}"
