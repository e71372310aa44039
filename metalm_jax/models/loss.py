"""The masked cross-entropy of the batch contract and the eval step: the
trainer's loss (train/steps.py) and its evaluations (train/eval_hooks.py, the
`loss` evaluator) share them, so they live below both.

`model_loss_sums` is the one way both compute the loss of a model on a
batch: with `model.decoder.loss_chunk` = 0 from the float32 logits
[B, L, V] (`loss_sums`), with N > 0 from the final hidden states, N
positions at a time, never holding the full logits (models/chunked_loss.py).
"""
from __future__ import annotations

from typing import Callable

import jax.numpy as jnp
import optax

from metalm_jax.models import chunked_loss


def loss_sums(logits, targets, weights):
  """(sum of weighted CE, sum of weighted correct, sum of weights), float32."""
  ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)
  correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
  w = weights.astype(jnp.float32)
  return jnp.sum(ce * w), jnp.sum(correct * w), jnp.sum(w)


def loss_chunk(model) -> int:
  """Positions per loss chunk of `model` (`model.decoder.loss_chunk`); 0 =
  the full logits. A model without that config field (a test double) has 0."""
  cfg = getattr(model, "cfg", None)
  decoder = cfg.get("decoder") if hasattr(cfg, "get") else None
  return int(decoder.get("loss_chunk", 0)) if decoder is not None else 0


def model_loss_sums(model, params, batch, deterministic: bool = True, rngs=None):
  """loss_sums of `model` on `batch` (its targets and loss_mask), through
  the path that `model.decoder.loss_chunk` picks."""
  variables = {"params": params}
  chunk = loss_chunk(model)
  if not chunk:
    logits = model.apply(variables, batch, deterministic=deterministic, rngs=rngs)
    return loss_sums(logits, batch["targets"], batch["loss_mask"])
  hidden = model.apply(variables, batch, deterministic=deterministic, rngs=rngs,
                       method="hidden_states")
  head = lambda h: model.apply(variables, h, method="head")
  return chunked_loss.chunked_loss_sums(head, hidden, batch["targets"], batch["loss_mask"], chunk)


def make_eval_step(model) -> Callable:
  """params, batch -> {'loss_sum', 'correct_sum', 'weight'} (summed, not averaged)."""
  def step(params, batch):
    s, c, w = model_loss_sums(model, params, batch)
    return {"loss_sum": s, "correct_sum": c, "weight": w}
  return step
