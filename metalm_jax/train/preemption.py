"""Preemption: SIGTERM (schedulers, `kill`) or Orbax's preemption sync point
(TPU VM maintenance / spot notices through the JAX coordination service)
make the loop save the current step, wait for the save and stop. The run then
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
  """The run stopped early at `step` after saving it; resume from the workdir."""

  def __init__(self, step: int, directory: str):
    super().__init__(f"preempted at step {step}; checkpoint saved in {directory}; restart "
                     f"on the same workdir to resume (exit status {PREEMPTED_EXIT_CODE})")
    self.step = step


class StopSignal:
  """Context manager: `requested` turns True on SIGTERM; `check(step)` adds
  Orbax's preemption sync point (all processes see it at the same step)."""

  def __init__(self):
    self.requested = False
    self._old = None

  def __enter__(self):
    try:
      self._old = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not the main thread: no handler
      self._old = None
    return self

  def _handle(self, signum, frame):
    logging.warning("SIGTERM: saving a checkpoint after this step, then exiting with %d",
                    PREEMPTED_EXIT_CODE)
    self.requested = True

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
    return bool(multihost_utils.process_allgather(np.int32(self.requested)).max())

  def __exit__(self, *exc):
    if self._old is not None:
      signal.signal(signal.SIGTERM, self._old)
