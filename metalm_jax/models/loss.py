"""The masked cross-entropy of the batch contract and the eval step: the
trainer's loss (train/steps.py) and its evaluations (train/eval_hooks.py, the
`loss` evaluator) share them, so they live below both."""
from __future__ import annotations

from typing import Callable

import jax.numpy as jnp
import optax


def loss_sums(logits, targets, weights):
  """(sum of weighted CE, sum of weighted correct, sum of weights), float32."""
  ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)
  correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
  w = weights.astype(jnp.float32)
  return jnp.sum(ce * w), jnp.sum(correct * w), jnp.sum(w)


def make_eval_step(model) -> Callable:
  """params, batch -> {'loss_sum', 'correct_sum', 'weight'} (summed, not averaged)."""
  def step(params, batch):
    logits = model.apply({"params": params}, batch, deterministic=True)
    s, c, w = loss_sums(logits, batch["targets"], batch["loss_mask"])
    return {"loss_sum": s, "correct_sum": c, "weight": w}
  return step
