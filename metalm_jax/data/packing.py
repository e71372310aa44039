"""Checkpointable Grain stages after the per-example map.

`DropFailed`: drops records with ok=False and adds their counters to the next
row it emits, so skips are never silent (with a finite `num_epochs`, skips
after the last emitted row have no row to ride on and are not reported).

`PackDocuments`: packs whole sentences of one or more documents into rows of
`seq_len`: each document piece is a segment `<s> sentences...` (paragraph
ends carry <eop>, the document end <eod>); a document that does not fit
continues in the next row. Then language spans are sampled inside segments
(`spans.sample_spans`) for the text encoder, if the model has one.

Both iterators keep only their parent's state plus a few ints, so Orbax can
save them and a restored iterator continues exactly.
"""
from __future__ import annotations

from typing import Any, Dict, List, Sequence

import grain
import numpy as np

from metalm_jax.data import spans as spans_lib
from metalm_jax.data import tasks as tasks_lib


def _add(stats: Dict[str, Any], more: Dict[str, Any]) -> None:
  for k, v in more.items():
    stats[k] = np.int64(stats[k] + v)


class _DropFailedIterator(grain.DatasetIterator):

  def __next__(self):
    stats = tasks_lib.new_stats()
    while True:
      rec = next(self._parent)
      _add(stats, rec["stats"])
      if rec["ok"]:
        out = dict(rec["row"])
        out["stats"] = stats
        return out

  def get_state(self):
    return self._parent.get_state()

  def set_state(self, state):
    self._parent.set_state(state)


class DropFailed(grain.IterDataset):
  def __iter__(self):
    return _DropFailedIterator(self._parent.__iter__())


class _PackIterator(grain.DatasetIterator):

  def __init__(self, parent, ctx: tasks_lib.Context, seed: int, component: int):
    super().__init__(parent)
    self._task, self._seed, self._component = ctx, seed, component
    self._doc = None
    self._doc_state = None
    self._offset = 0
    self._counted = False

  def _load(self):
    self._doc_state = self._parent.get_state()
    self._doc = next(self._parent)
    self._offset, self._counted = 0, False

  def __next__(self):
    ctx, tok = self._task, self._task.tokenizer
    stats = tasks_lib.new_stats()
    row = spans_lib.Row(ctx.seq_len, tok.pad)
    intervals: List[tuple] = []
    first = None
    while row.room >= 2:
      if self._doc is None:
        try:
          self._load()
        except StopIteration:
          if row.length:
            break
          raise
      if not self._counted:
        _add(stats, self._doc["stats"])
        self._counted = True
      if not self._doc["ok"]:
        self._doc = None
        continue
      sents = self._doc["sentences"]
      take, need = [], 1
      for s in sents[self._offset:]:
        if need + len(s) > row.room:
          break
        take.append(s)
        need += len(s)
      if not take:
        break  # the row has content; this document continues in the next row
      if first is None:
        first = (self._doc["index"], self._offset)
      row.start_segment()
      start = row.add_tokens([tok.bos], train=False)
      row.add_tokens(np.concatenate(take), train=True)
      intervals.append((start + 1, row.length - 1))
      self._offset += len(take)
      if self._offset == len(sents):
        self._doc = None
    if ctx.text:
      rng = np.random.default_rng([self._seed, self._component, first[0], first[1], 1])
      enc = ctx.model_cfg.encoders[ctx.text]
      chosen = spans_lib.sample_spans(intervals, row.length, rng, ctx.span_min, ctx.span_max,
                                      ctx.span_ratio, enc.max_items)
      for item, (s, n) in enumerate(chosen):
        row.mark_span(s, n, ctx.text, item)
    out = spans_lib.layout_arrays(row, ctx.model_cfg)
    out["encoders"] = spans_lib.encoder_arrays(row, ctx.model_cfg, {}, tok.pad)
    out["stats"] = stats
    return out

  def get_state(self):
    has_doc = self._doc is not None
    return {"parent": self._doc_state if has_doc else self._parent.get_state(),
            "has_doc": has_doc, "offset": self._offset, "counted": self._counted}

  def set_state(self, state):
    self._parent.set_state(state["parent"])
    self._doc = None
    if state["has_doc"]:
      self._doc_state = state["parent"]
      self._doc = next(self._parent)
    self._offset, self._counted = int(state["offset"]), bool(state["counted"])


class PackDocuments(grain.IterDataset):
  def __init__(self, parent, ctx: tasks_lib.Context, seed: int, component: int):
    super().__init__(parent)
    self._task, self._seed, self._component = ctx, seed, component

  def __iter__(self):
    return _PackIterator(self._parent.__iter__(), self._task, self._seed, self._component)


def collate(rows: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
  """Stacks rows into a batch; `stats` counters are summed over the rows."""
  out = {k: np.stack([r[k] for r in rows]) for k in rows[0] if k not in ("encoders", "stats")}
  out["encoders"] = {
      name: {k: np.stack([r["encoders"][name][k] for r in rows]) for k in enc}
      for name, enc in rows[0]["encoders"].items()}
  out["stats"] = {k: np.int64(sum(int(r["stats"][k]) for r in rows)) for k in rows[0]["stats"]}
  return out
