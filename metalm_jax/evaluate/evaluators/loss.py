"""`loss`: token-weighted loss, accuracy and perplexity over the pipeline
rows of a split (its `mixture`, default the run's), computed by the
trainer's own eval step (models/loss.py), jitted once per model and shapes."""
from __future__ import annotations

import functools
import logging
import math
from typing import Callable

import jax
import ml_collections
import numpy as np

from metalm_jax.evaluate.evaluators import common
from metalm_jax.models import loss as loss_lib
from metalm_jax.data import pipeline


@functools.lru_cache(maxsize=None)
def eval_step(model) -> Callable:
  """The trainer's eval step for `model`, one function per model, so its jit
  (placement.jit, keyed by function) and compiled programs are reused."""
  return loss_lib.make_eval_step(model)


def _global_batch(pl, batch, size: int, rows: int):
  """This process's rows of a `rows`-row global batch; rows past the `size`
  real ones copy the last real row with no trained tokens."""
  mine = pl.process_rows(rows)
  take = [min(r, size - 1) for r in mine]
  local = jax.tree.map(lambda x: np.asarray(x)[take], batch)
  local["loss_mask"] = local["loss_mask"] * (np.asarray(mine) < size)[:, None]
  return pl.global_array(local, mine, rows)


@common.register("loss", num_batches=8, mixture=None)
def eval_loss(env: common.Env, ev):
  """Every process reads the same pipeline batches and runs its rows of each;
  the step's sums (replicated) are added over batches in float64."""
  config = ml_collections.ConfigDict(env.config.to_dict())
  if ev.mixture:
    config.data.mixture = dict(ev.mixture)
  size = int(ev.batch_size)
  it = pipeline.make_iterator(config, ev.split, batch_size=size, shuffle=False, num_epochs=1,
                              seed=int(ev.seed))
  pl = env.placed()
  params = pl.put_params(env.params)
  fn = pl.jit(eval_step(env.model), replicated_out=True)
  rows = pl.global_batch_size(size)
  tot = {"loss_sum": 0.0, "correct_sum": 0.0, "weight": 0.0}
  batches = 0
  for _ in range(int(ev.num_batches)):
    try:
      batch, _ = pipeline.split_stats(next(it))
    except StopIteration:
      break
    out = pl.call(fn, params, _global_batch(pl, batch, size, rows))
    for k in tot:
      tot[k] += float(np.asarray(out[k].addressable_data(0), np.float64))
    batches += 1
  count = tot["weight"]
  if count:
    loss, accuracy = tot["loss_sum"] / count, tot["correct_sum"] / count
    perplexity = math.exp(min(loss, 80.0))
  else:
    logging.warning("evals loss: split %r gave no trained tokens (%d batches); loss is NaN",
                    ev.split, batches)
    loss = accuracy = perplexity = float("nan")
  return {"loss": loss, "accuracy": accuracy, "perplexity": perplexity, "tokens": count,
          "batches": batches}, []
