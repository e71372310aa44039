"""Semi-causal sequence layout: rows of segments with non-causal spans.

A row is built left to right (`Row`): plain tokens, and spans whose decoder
input embeddings are replaced by an encoder's outputs (one span = one encoder
item; element j of the item docks at the span's j-th position).

Loss rule (the one place it is decided): position t is trained iff t and t+1
are in the same segment, the token at t+1 was added as trainable, and t+1 is
not docked. So a span's last position predicts the first token after the
span, and no position is ever trained on a token its inputs saw through an
encoder (the original code trains one such token per span; we do not).

Language spans (`sample_spans`): lengths in [min_len, max_len], placed inside
one document segment each (never across a boundary), at least one plain token
apart, until they cover `ratio` of the row's real tokens: coverage ends in
[target, target + min_len) unless the row runs out of room or encoder items.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from metalm_jax import batch as batch_lib


@dataclasses.dataclass
class Span:
  start: int      # first row position
  length: int
  encoder: str    # name in model.encoders
  item: int       # encoder item index within the row
  tokens: Optional[np.ndarray] = None  # text spans: ids the encoder reads


class Row:
  """One decoder row of `seq_len` positions under construction."""

  def __init__(self, seq_len: int, pad_id: int):
    self.seq_len = seq_len
    self.pad_id = pad_id
    self.tokens = np.full(seq_len, pad_id, np.int32)
    self.segment_ids = np.zeros(seq_len, np.int32)
    self.positions = np.zeros(seq_len, np.int32)
    self.trainable = np.zeros(seq_len, bool)
    self.spans: List[Span] = []
    self.length = 0
    self.num_segments = 0
    self._seg_start = 0

  @property
  def room(self) -> int:
    return self.seq_len - self.length

  def start_segment(self) -> None:
    self.num_segments += 1
    self._seg_start = self.length

  def add_tokens(self, ids: Sequence[int], train: bool) -> int:
    """Appends plain tokens to the current segment; returns their start."""
    n = len(ids)
    if n > self.room:
      raise ValueError(f"row overflow: {n} tokens, {self.room} positions left")
    if self.num_segments == 0:
      raise ValueError("add_tokens before start_segment")
    s = self.length
    self.tokens[s:s + n] = ids
    self.segment_ids[s:s + n] = self.num_segments
    self.positions[s:s + n] = np.arange(s - self._seg_start, s - self._seg_start + n)
    self.trainable[s:s + n] = train
    self.length += n
    return s

  def add_span(self, length: int, encoder: str, item: int,
               tokens: Optional[Sequence[int]] = None) -> Span:
    """Appends a docked span (its decoder ids are `tokens`, or pad)."""
    ids = [self.pad_id] * length if tokens is None else list(tokens)
    start = self.add_tokens(ids, train=False)
    span = Span(start, length, encoder, item,
                None if tokens is None else np.asarray(tokens, np.int32))
    self.spans.append(span)
    return span

  def mark_span(self, start: int, length: int, encoder: str, item: int) -> Span:
    """Turns existing tokens [start, start+length) into a docked text span."""
    span = Span(start, length, encoder, item, self.tokens[start:start + length].copy())
    self.spans.append(span)
    return span


def sample_spans(intervals: Sequence[Tuple[int, int]], num_tokens: int,
                 rng: np.random.Generator, min_len: int, max_len: int, ratio: float,
                 max_spans: int) -> List[Tuple[int, int]]:
  """Chooses (start, length) spans inside `intervals` ([a, b) ranges, one per
  document segment) covering about `ratio * num_tokens` positions."""
  if not 1 <= min_len <= max_len:
    raise ValueError(f"span lengths min_len={min_len}, max_len={max_len} are invalid")
  target = int(round(ratio * num_tokens))
  free = [tuple(iv) for iv in intervals if iv[1] - iv[0] >= min_len]
  spans: List[Tuple[int, int]] = []
  covered = 0
  while covered < target and len(spans) < max_spans:
    free = [iv for iv in free if iv[1] - iv[0] >= min_len]
    if not free:
      break
    sizes = np.array([b - a for a, b in free], np.float64)
    k = int(rng.choice(len(free), p=sizes / sizes.sum()))
    a, b = free.pop(k)
    hi = min(max_len, b - a)
    need = target - covered
    # Long enough that the spans still allowed can reach the target.
    lo = min(hi, max(min_len, need - (max_spans - len(spans) - 1) * max_len))
    length = int(rng.integers(lo, hi + 1))
    if length > need:
      length = max(min_len, need)
    start = a + int(rng.integers(0, b - a - length + 1))
    spans.append((start, length))
    covered += length
    # Keep one plain position between spans so something is trained there.
    free += [(a, start - 1), (start + length + 1, b)]
  return sorted(spans)


def layout_arrays(row: Row, model_cfg) -> Dict[str, np.ndarray]:
  """The decoder part of the batch contract for one row (no batch dim)."""
  l = row.seq_len
  docked = np.zeros(l, bool)
  dock_index = np.zeros(l, np.int32)
  offsets = batch_lib.dock_offsets(model_cfg.encoders)
  for sp in row.spans:
    enc = model_cfg.encoders[sp.encoder]
    t = batch_lib.slot_length(enc)
    if sp.item >= enc.max_items or sp.length > t:
      raise ValueError(f"span item {sp.item} / length {sp.length} does not fit encoder "
                       f"{sp.encoder!r} (max_items={enc.max_items}, slot length {t})")
    sl = slice(sp.start, sp.start + sp.length)
    docked[sl] = True
    dock_index[sl] = offsets[sp.encoder] + sp.item * t + np.arange(sp.length)
  seg = row.segment_ids
  targets = np.full(l, row.pad_id, np.int32)
  same = np.zeros(l, bool)
  same[:-1] = (seg[1:] == seg[:-1]) & (seg[:-1] > 0)
  targets[:-1] = np.where(same[:-1], row.tokens[1:], row.pad_id)
  nxt_train = np.zeros(l, bool)
  nxt_train[:-1] = row.trainable[1:] & ~docked[1:]
  loss = same & nxt_train
  return {"tokens": row.tokens.copy(), "targets": targets, "loss_mask": loss.astype(np.float32),
          "segment_ids": seg.copy(), "positions": row.positions.copy(),
          "dock_index": dock_index, "dock_mask": docked}


def encoder_arrays(row: Row, model_cfg, images: Mapping[Tuple[str, int], np.ndarray],
                   pad_id: int) -> Dict[str, Dict[str, np.ndarray]]:
  """Per-encoder inputs of one row: images[(encoder, item)] are the
  preprocessed inputs of whole-item encoders (those with a `valid` array:
  pixels, waveforms, video frames); text spans give the text encoder its tokens."""
  out = {}
  for name, enc in sorted(model_cfg.encoders.items()):
    spec = batch_lib.encoder_inputs(enc, 1)
    arrays = {k: np.zeros(shape[1:], dtype) for k, (shape, dtype) in spec.items()}
    if enc.type == "bert":
      arrays["tokens"][:] = pad_id
    out[name] = arrays
  for sp in row.spans:
    arrays = out[sp.encoder]
    if "valid" in arrays:
      key, = (k for k in arrays if k != "valid")
      arrays[key][sp.item] = images[(sp.encoder, sp.item)]
      arrays["valid"][sp.item] = True
    else:
      arrays["tokens"][sp.item, :sp.length] = sp.tokens
      arrays["mask"][sp.item, :sp.length] = True
  return out
