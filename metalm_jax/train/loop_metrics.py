"""Train-step metrics between log steps: kept on the device and fetched to the
host only when they are logged (as big_vision does), so an accelerator never
waits for the host in between.

CPU is the exception: a long run of sharded jitted steps that nobody waits for
can deadlock in XLA:CPU's collectives (rendezvous aborts after 40 s; see
ENVIRONMENT.md), so on CPU every step blocks until its loss is ready.
"""
from __future__ import annotations

import math
from typing import Dict, List

import jax
import jax.numpy as jnp

from metalm_jax.train import metrics as metrics_lib


class StepMetrics:

  def __init__(self, block_every_step: bool):
    self.block = block_every_step
    self._pending: List[Dict] = []
    self._first = None

  @classmethod
  def for_backend(cls) -> "StepMetrics":
    return cls(block_every_step=jax.devices()[0].platform == "cpu")

  def add(self, step: int, m) -> None:
    """Metrics (device arrays) of the step that completed `step`."""
    if self.block:
      jax.block_until_ready(m["loss"])
    if not self._pending:
      self._first = step
    self._pending.append(m)

  def fetch(self, step: int) -> Dict[str, float]:
    """The interval's averages (loss, accuracy, grad_norm; last learning rate);
    raises FloatingPointError naming the steps if the loss is not finite."""
    host = jax.device_get(self._pending)
    acc = None
    for m in host:
      one = metrics_lib.TrainMetrics.single_from_model_output(
          **{k: jnp.asarray(v) for k, v in m.items() if k != "trained_tokens"})
      acc = one if acc is None else acc.merge(one)
    first, self._pending = self._first, []
    bad = [first + i for i, m in enumerate(host) if not math.isfinite(float(m["loss"]))]
    if bad:
      raise FloatingPointError(f"loss is {host[bad[0] - first]['loss']} at step {bad[0]}")
    return {k: float(v) for k, v in acc.compute().items()}
