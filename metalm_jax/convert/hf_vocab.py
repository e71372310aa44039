"""Decoder embedding rows for tokens added to an imported model's tokenizer
(data/hf_tokenizer.py `add_project_specials`).

A new token's row (of `embedder/embedding` [vocab, emb], and its column of
an untied `lm_head/kernel` [emb, vocab]) starts as the mean of the rows of
the original tokens (ids below the tokenizer's original size), then trains.
Rows are appended after the last one; where the model already has rows past
its tokenizer (HF models that round the embedding up, e.g. Qwen2), a new
token takes the unused row at its id, which is overwritten with the mean.
Original tokens' rows are never touched, so logits on original ids are the
imported model's exactly.
"""
from __future__ import annotations

from typing import Any, Dict, Sequence

import numpy as np

from metalm_jax.data import hf_tokenizer


def _with_mean_rows(table: np.ndarray, axis: int, old_size: int, new_ids: Sequence[int],
                    size: int) -> np.ndarray:
  """`table` grown along `axis` to `size`, new_ids set to the mean over [0, old_size)."""
  t = np.moveaxis(np.asarray(table), axis, 0)
  mean = t[:old_size].astype(np.float64).mean(axis=0).astype(t.dtype)
  out = np.concatenate([t, np.zeros((size - t.shape[0],) + t.shape[1:], t.dtype)])
  out[list(new_ids)] = mean
  return np.moveaxis(out, 0, axis)


def add_token_rows(tree: Dict[str, Any], section, old_size: int,
                   new_ids: Sequence[int]) -> int:
  """Gives the decoder params `tree` (modified in place) rows for `new_ids`,
  initialised as the mean of rows [0, old_size); the untied lm_head (when
  `section.tie_embeddings` is False) too. Sets and returns
  `section.vocab_size`: max(old vocab_size, last new id + 1)."""
  vocab = int(section.vocab_size)
  if not new_ids:
    return vocab
  if not 0 < old_size <= vocab:
    raise ValueError(f"old_size={old_size} must be in [1, model.decoder.vocab_size={vocab}]")
  if min(new_ids) < old_size:
    raise ValueError(f"new token ids {sorted(new_ids)} overlap the original ids "
                     f"(< old_size={old_size})")
  size = max(vocab, max(new_ids) + 1)
  emb = tree["embedder"]["embedding"]
  if emb.shape[0] != vocab:
    raise ValueError(f"embedder/embedding has {emb.shape[0]} rows, but "
                     f"model.decoder.vocab_size={vocab}")
  tree["embedder"]["embedding"] = _with_mean_rows(emb, 0, old_size, new_ids, size)
  if not section.tie_embeddings:
    tree["lm_head"]["kernel"] = _with_mean_rows(tree["lm_head"]["kernel"], 1, old_size,
                                                new_ids, size)
  section.vocab_size = size
  return size


def add_special_tokens(tokenizer_json: str, tree: Dict[str, Any], section) -> Dict[str, int]:
  """Adds the project's special tokens that tokenizer.json `tokenizer_json`
  lacks to it (rewritten in place) and their rows to the decoder `tree` /
  `section` (add_token_rows); returns {token: new id}."""
  added = hf_tokenizer.add_project_specials(tokenizer_json, tokenizer_json)
  add_token_rows(tree, section, added.old_size, sorted(added.tokens.values()))
  return added.tokens
