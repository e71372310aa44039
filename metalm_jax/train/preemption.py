"""Preemption: SIGTERM (schedulers, `kill`) or Orbax's preemption sync point
(TPU VM maintenance / spot notices through the JAX coordination service)
make the loop save the current step, wait for the save and stop. The handler
is installed before any start-up work (the entry point's, then the trainer's
lock, drift check, restore, data and compile): a SIGTERM during start-up
stops the run at the next start-up check, with nothing new to save. The run then
raises `Preempted`; the entry point exits with PREEMPTED_EXIT_CODE, which
means "preempted, start me again on the same workdir": launch/tpu_pod.sh
restarts on it, launch/gpu_slurm.sh requeues the job. A preempted run writes
no final_metrics.json and prints no `final:` line.
"""
from __future__ import annotations

import logging
import signal

import jax
import numpy as np
from jax.experimental import multihost_utils
from orbax.checkpoint import multihost as ocp_multihost

PREEMPTED_EXIT_CODE = 42


class Preempted(Exception):
  """The run stopped early at `step`, after saving it (`saved`) or with
  nothing new to save (during start-up, or at a skipped step); resume from
  the workdir."""

  def __init__(self, step: int, directory: str, saved: bool = True):
    what = (f"checkpoint saved in {directory}" if saved else
            f"nothing new to save (the checkpoints in {directory} are as they were)")
    super().__init__(f"preempted at step {step}; {what}; restart on the same workdir to resume "
                     f"(exit status {PREEMPTED_EXIT_CODE})")
    self.step, self.saved = step, saved


# SIGTERM seen since the outermost StopSignal was entered (shared by nested ones,
# so a signal during the entry point's start-up reaches the trainer).
_requested = [False]


def _handle(signum, frame):
  logging.warning("SIGTERM: stopping at the next safe point (saving the step if training), "
                  "then exiting with %d", PREEMPTED_EXIT_CODE)
  _requested[0] = True


class StopSignal:
  """Context manager: `requested` turns True on SIGTERM from the moment it is
  entered (the entry point enters one before start-up, the trainer one around
  the whole run: lock, restore, compile, data, loop); `should_stop(step)`
  adds Orbax's preemption sync point (all processes see it at the same step)."""

  def __init__(self):
    self._old = None
    self._installed = False

  def __enter__(self):
    try:
      self._old = signal.signal(signal.SIGTERM, _handle)
      self._installed = True
    except ValueError:  # not the main thread: no handler
      return self
    if self._old is not _handle:  # the outermost one: a fresh start
      _requested[0] = False
    return self

  @property
  def requested(self) -> bool:
    return _requested[0]

  @requested.setter
  def requested(self, value: bool) -> None:
    _requested[0] = bool(value)

  def requested_everywhere(self) -> bool:
    """Whether any process saw SIGTERM (a collective with several processes:
    call it where every process is at the same point of start-up)."""
    if jax.process_count() == 1:
      return self.requested
    return bool(multihost_utils.process_allgather(np.int32(self.requested)).max())

  def should_stop(self, step: int, sync_now: bool) -> bool:
    """Whether every process stops after `step`. Orbax's sync point is agreed
    by construction; a SIGTERM seen by some processes is agreed on only when
    `sync_now` (log steps: an all-gather is a device round trip, which the
    loop makes only where it fetches metrics anyway)."""
    if ocp_multihost.reached_preemption(step):
      logging.warning("preemption sync point at step %d: saving and exiting", step)
      self.requested = True
      return True
    if jax.process_count() == 1:
      return self.requested
    if not sync_now:
      return False
    return self.requested_everywhere()

  def __exit__(self, *exc):
    if self._installed:
      signal.signal(signal.SIGTERM, self._old)
