"""Skipped training steps: the host side of the skip in train/steps.py.

The jitted step leaves the state untouched when the loss or the gradient norm
is NaN/Inf, or when the loss is a spike: above `max_loss`, which the host
sets to `config.loss_spike.factor` times the median of the last
`config.loss_spike.window` applied losses (factor 0: off). Skipped steps are
counted in `state["skipped_nonfinite_steps"]` (spikes included). Here

  - `Guard.update`: logs each skipped step, keeps the loss window, and stops
    the run with `Diverged` (a FloatingPointError naming the step) after
    `config.max_nonfinite_steps` skipped steps in a row (the state is still
    the last applied one; nothing non-finite has been saved). The trainer then
    picks the step to restart from (train/divergence.py);
  - `check_finite`: refuses to save a checkpoint whose params or optimizer
    state hold a NaN/Inf (called by Checkpointer.save before every save).
"""
from __future__ import annotations

import collections
import logging
import math
from typing import Any, List, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from metalm_jax.train import state as state_lib

SKIPPED_KEY = state_lib.SKIPPED_KEY
STEP_FLAG = "nonfinite"  # per-step metric of the jitted step: 1 = non-finite, update skipped
SPIKE_FLAG = "spike"     # per-step metric: 1 = loss above max_loss, update skipped


class Diverged(FloatingPointError):
  """`in_a_row` skipped steps in a row, from `first_bad` to `step`."""

  def __init__(self, message: str, step: int, first_bad: int, in_a_row: int):
    super().__init__(message)
    self.step, self.first_bad, self.in_a_row = step, first_bad, in_a_row


def was_skipped(metrics: Mapping[str, Any]) -> bool:
  return bool(int(metrics[STEP_FLAG])) or bool(int(metrics.get(SPIKE_FLAG, 0)))


class Guard:
  """Counts skipped steps in a row; raises Diverged after `max_in_a_row`.
  `spike_factor` > 0: `max_loss()` is that multiple of the median of the last
  `window` applied losses (inf until one is known)."""

  def __init__(self, max_in_a_row: int, spike_factor: float = 0.0, window: int = 32):
    if max_in_a_row < 1:
      raise ValueError(f"config.max_nonfinite_steps={max_in_a_row}: must be >= 1")
    self.max_in_a_row = int(max_in_a_row)
    self.in_a_row = 0
    self.first_bad = None  # first step of the current run of skipped steps
    self.spike_factor = float(spike_factor)
    self.losses = collections.deque(maxlen=max(int(window), 1))
    self.on_skip = None  # called as on_skip(step, first_of_run) at each skipped step

  def max_loss(self) -> float:
    if self.spike_factor <= 0 or not self.losses:
      return math.inf
    return self.spike_factor * float(np.median(self.losses))

  def update(self, step: int, metrics: Mapping[str, Any]) -> bool:
    """`metrics` of the jitted step that produced `step` (1-based, as logged);
    returns True when that step's update was skipped."""
    if not was_skipped(metrics):
      self.in_a_row, self.first_bad = 0, None
      self.losses.append(float(metrics["loss"]))
      return False
    self.in_a_row += 1
    first = self.first_bad is None
    if first:
      self.first_bad = step
    if self.on_skip is not None:
      self.on_skip(step, first)
    spike = bool(int(metrics.get(SPIKE_FLAG, 0)))
    kind = "loss spike" if spike else "non-finite"
    what = f"loss {float(metrics['loss'])}, grad_norm {float(metrics['grad_norm'])}"
    if spike:
      what += f", above {self.max_loss():.4g} (config.loss_spike.factor x the median loss)"
    logging.warning("step %d: %s (%s); update skipped (%d in a row, %d in this run)",
                    step, kind, what, self.in_a_row, int(metrics[SKIPPED_KEY]))
    if self.in_a_row >= self.max_in_a_row:
      raise Diverged(
          f"{self.in_a_row} skipped steps in a row (non-finite or loss spikes), the first at "
          f"step {self.first_bad}, the last at step {step} ({kind}: {what}); "
          f"config.max_nonfinite_steps={self.max_in_a_row}. The run stops; nothing non-finite "
          "was saved", step, self.first_bad, self.in_a_row)
    return True


@jax.jit
def _finite_flags(leaves):
  return [jnp.all(jnp.isfinite(x)) for x in leaves]


def nonfinite_leaves(tree) -> List[str]:
  """Names ('params/decoder/...') of floating leaves holding a NaN or Inf."""
  named = []
  state_lib.map_with_names(lambda n, x: named.append((n, x)), tree)
  named = [(n, x) for n, x in named if jnp.issubdtype(jnp.result_type(x), jnp.inexact)]
  if not named:
    return []
  flags = _finite_flags([x for _, x in named])
  # A full reduction is replicated: every process reads its own copy.
  ok = [bool(np.asarray(f.addressable_data(0) if isinstance(f, jax.Array) else f))
        for f in flags]
  return [n for (n, _), good in zip(named, ok) if not good]


def check_finite(state: Mapping[str, Any], step: int) -> None:
  """Raises FloatingPointError if params or optimizer state hold a NaN/Inf."""
  bad = nonfinite_leaves({k: state[k] for k in ("params", "opt_state") if k in state})
  if bad:
    raise FloatingPointError(
        f"refusing to save step {step}: non-finite values in {len(bad)} arrays "
        f"({', '.join(bad[:5])}{', ...' if len(bad) > 5 else ''})")
