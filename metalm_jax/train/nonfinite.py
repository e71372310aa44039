"""Non-finite training steps: the host side of the skip in train/steps.py.

The jitted step already leaves the state untouched when the loss or the
gradient norm is NaN/Inf (and counts it in `state["skipped_nonfinite_steps"]`).
Here the trainer

  - `Guard.update`: logs each skipped step and stops the run with a
    FloatingPointError naming the step after `config.max_nonfinite_steps`
    skipped steps in a row (the state is still the last finite one; nothing
    non-finite has been saved);
  - `check_finite`: refuses to save a checkpoint whose params or optimizer
    state hold a NaN/Inf (called by Checkpointer.save before every save).
"""
from __future__ import annotations

import logging
from typing import Any, List, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from metalm_jax.train import state as state_lib

SKIPPED_KEY = state_lib.SKIPPED_KEY
STEP_FLAG = "nonfinite"  # per-step metric of the jitted step: 1 = update skipped


class Guard:
  """Counts skipped steps in a row; raises after `max_in_a_row` of them."""

  def __init__(self, max_in_a_row: int):
    if max_in_a_row < 1:
      raise ValueError(f"config.max_nonfinite_steps={max_in_a_row}: must be >= 1")
    self.max_in_a_row = int(max_in_a_row)
    self.in_a_row = 0

  def update(self, step: int, metrics: Mapping[str, Any]) -> bool:
    """`metrics` of the jitted step that produced `step` (1-based, as logged);
    returns True when that step's update was skipped."""
    if not int(metrics[STEP_FLAG]):
      self.in_a_row = 0
      return False
    self.in_a_row += 1
    what = f"loss {float(metrics['loss'])}, grad_norm {float(metrics['grad_norm'])}"
    logging.warning("step %d: non-finite %s; update skipped (%d in a row, %d in this run)",
                    step, what, self.in_a_row, int(metrics[SKIPPED_KEY]))
    if self.in_a_row >= self.max_in_a_row:
      raise FloatingPointError(
          f"{self.in_a_row} non-finite steps in a row, the last at step {step} ({what}); "
          f"config.max_nonfinite_steps={self.max_in_a_row}. The run stops; nothing non-finite "
          "was saved: restart from the workdir's last checkpoint (e.g. with a lower "
          "optimizer.lr or after fixing the data)")
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
