"""Train-step metrics between log steps: kept on the device and fetched to the
host only when they are logged (as big_vision does), so an accelerator never
waits for the host in between.

CPU is the exception: a long run of sharded jitted steps that nobody waits for
can deadlock in XLA:CPU's collectives (rendezvous aborts after 40 s; see
ENVIRONMENT.md), so on CPU every step blocks until its loss is ready.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Tuple

import jax
import jax.numpy as jnp

from metalm_jax.train import metrics as metrics_lib
from metalm_jax.train import nonfinite

AVERAGED = ("loss", "accuracy", "grad_norm", "learning_rate")  # TrainMetrics inputs


class StepMetrics:
  """The train-step metrics of one log interval.

  `guard` (train/nonfinite.Guard) sees every step's `nonfinite` flag: on CPU
  as the step completes, on accelerators when the interval is fetched (so a
  run of skipped steps stops at the next log step; the skipped steps left the
  state untouched, so nothing is lost but their time). Skipped steps are left
  out of the interval's averages."""

  def __init__(self, block_every_step: bool, guard=None):
    self.block = block_every_step
    self.guard = guard
    self._pending: List[Tuple[int, Dict, Optional[bool]]] = []  # (step, metrics, skipped)
    self._last: Tuple[int, bool] = (0, False)  # the latest step the guard saw, skipped?

  @classmethod
  def for_backend(cls, guard=None) -> "StepMetrics":
    return cls(block_every_step=jax.devices()[0].platform == "cpu", guard=guard)

  def _skipped(self, step: int, m) -> bool:
    out = bool(self.guard.update(step, m)) if self.guard is not None else False
    self._last = (step, out)
    return out

  def add(self, step: int, m) -> None:
    """Metrics (device arrays) of the step that completed `step`."""
    skipped = None
    if self.block:
      m = jax.device_get(m)  # waits for the step (see the module docstring)
      skipped = self._skipped(step, m)
    self._pending.append((step, m, skipped))

  def last_skipped(self) -> bool:
    """Whether the latest step's update was skipped; the guard sees every
    pending step first (on accelerators: a device round trip, made only at
    save steps)."""
    need = [i for i, (_, _, sk) in enumerate(self._pending) if sk is None]
    host = jax.device_get([self._pending[i][1] for i in need])
    for i, m in zip(need, host):
      s, dev, _ = self._pending[i]
      self._pending[i] = (s, dev, self._skipped(s, m))
    return self._last[1]

  def fetch(self, step: int) -> Dict[str, float]:
    """The interval's averages (loss, accuracy, grad_norm; last learning rate)
    over the steps whose update was applied, and the run's skipped-step count;
    raises FloatingPointError naming the step if an applied step's loss is not
    finite (the jitted step skips those, so this means a broken step)."""
    host = jax.device_get([m for _, m, _ in self._pending])
    merged, out = None, {}  # the interval's clu metrics, merged step by step
    for (s, _, skipped), m in zip(self._pending, host):
      if skipped is None:
        skipped = self._skipped(s, m)
      if skipped:
        continue
      if not math.isfinite(float(m["loss"])):
        raise FloatingPointError(f"loss is {m['loss']} at step {s}")
      one = metrics_lib.TrainMetrics.single_from_model_output(
          **{k: jnp.asarray(m[k]) for k in AVERAGED})
      merged = one if merged is None else merged.merge(one)
    if host and nonfinite.SKIPPED_KEY in host[-1]:
      out[nonfinite.SKIPPED_KEY] = float(host[-1][nonfinite.SKIPPED_KEY])
    self._pending = []
    if merged is not None:
      out.update({k: float(v) for k, v in merged.compute().items()})
    return out
