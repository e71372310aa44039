"""Per-process input: the pipeline split into `config.data_shards` shards
(0 = one per process). A process reads its consecutive block of shards and
concatenates their rows, so the global batch (and the data order) does not
depend on how many processes share the work: one process reading 2 shards
sees exactly what two processes reading one each see together.
"""
from __future__ import annotations

from typing import Any, Dict, List

import jax
import numpy as np


class ConcatIterator:
  """Several shard iterators as one; rows concatenated, `stats` counters summed.
  get_state / set_state carry every shard's position."""

  def __init__(self, iterators: List[Any]):
    self.iterators = iterators

  def __iter__(self):
    return self

  def __next__(self) -> Dict[str, Any]:
    parts = [next(it) for it in self.iterators]
    out = {}
    for key in parts[0]:
      vals = [p[key] for p in parts]
      if key == "stats":
        out[key] = {k: np.sum([np.sum(v[k]) for v in vals]) for k in vals[0]}
      else:
        out[key] = jax.tree.map(lambda *xs: np.concatenate(xs, axis=0), *vals)
    return out

  def get_state(self) -> Dict[str, Any]:
    return {"shards": [it.get_state() for it in self.iterators]}

  def set_state(self, state: Dict[str, Any]) -> None:
    shards = state["shards"]
    if len(shards) != len(self.iterators):
      raise ValueError(f"checkpointed data iterator has {len(shards)} shards, this run "
                       f"reads {len(self.iterators)} (config.data_shards changed?)")
    for it, s in zip(self.iterators, shards):
      it.set_state(s)


def num_shards(config, process_count: int) -> int:
  n = config.get("data_shards", 0) or process_count
  if n % process_count:
    raise ValueError(f"config.data_shards={n}: not a multiple of the process count "
                     f"{process_count}")
  if config.batch_size % n:
    raise ValueError(f"config.data_shards={n}: does not divide batch_size={config.batch_size}")
  return n


def make_process_iterator(data, config, split: str, *, global_batch_size: int, seed: int,
                          shuffle: bool, num_epochs):
  """This process's iterator over `global_batch_size / process_count` rows."""
  pc, pi = jax.process_count(), jax.process_index()
  n = num_shards(config, pc)
  per_shard, k = global_batch_size // n, n // pc
  its = [data.make_iterator(config, split, batch_size=per_shard, process_index=pi * k + j,
                            process_count=n, seed=seed, shuffle=shuffle, num_epochs=num_epochs)
         for j in range(k)]
  return its[0] if k == 1 else ConcatIterator(its)
