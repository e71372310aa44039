"""Log-likelihood scoring of candidate continuations (label words, multiple
choice) after a prompt that may contain docked encoder inputs.

`append_candidates` turns a LEFT-padded prompt batch (metalm_jax/evaluate/
prompts.py) and C candidates per row into B*C rows: prompt, then the
candidate's tokens, then right padding; `loss_mask` marks the positions that
predict candidate tokens. `sequence_logprobs` is one full forward pass.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from metalm_jax.models.metalm import MetaLM


class Scores(NamedTuple):
  sum: Any    # float32 [...]: sum of log p(candidate tokens | prompt)
  mean: Any   # float32 [...]: sum / number of candidate tokens
  count: Any  # float32 [...]: number of candidate tokens


def _sequence_logprobs(params, batch, *, model: MetaLM) -> Scores:
  logits = model.apply({"params": params}, batch)
  logp = jax.nn.log_softmax(logits, -1)
  tok = jnp.take_along_axis(logp, batch["targets"][..., None], -1)[..., 0]
  mask = batch["loss_mask"].astype(jnp.float32)
  total = (tok * mask).sum(-1)
  count = mask.sum(-1)
  return Scores(total, jnp.where(count > 0, total / count, jnp.nan), count)  # no tokens: NaN


_jitted = jax.jit(_sequence_logprobs, static_argnames=("model",))


def sequence_logprobs(model: MetaLM, params, batch, placement=None) -> Scores:
  """Per row: log-probs of `targets` summed over `loss_mask` (one forward);
  the mean is NaN for a row with no scored tokens. With a `placement`
  (evaluate/placement.py), params and batch are global arrays placed by it
  and the jit has its explicit shardings."""
  if placement is None:
    return _jitted(params, batch, model=model)
  return placement.call(placement.jit(_sequence_logprobs, model=model), params, batch)


def append_candidates(prompt_batch: Mapping[str, Any],
                      candidates: Sequence[Sequence[Sequence[int]]],
                      pad_id: int, cand_len: int | None = None) -> Dict[str, Any]:
  """Rows b*C + c = prompt b followed by candidates[b][c] (numpy batch).

  Every row must have the same number C of candidates; `cand_len` (default:
  the longest candidate) fixes the appended width for stable shapes."""
  tokens = np.asarray(prompt_batch["tokens"])
  b, length = tokens.shape
  if len(candidates) != b:
    raise ValueError(f"candidates has {len(candidates)} rows, prompt batch has {b}")
  num = {len(c) for c in candidates}
  if len(num) != 1 or 0 in num:
    raise ValueError(f"every row needs the same, non-zero number of candidates; got {sorted(num)}")
  c = num.pop()
  longest = max(len(x) for row in candidates for x in row)
  if min(len(x) for row in candidates for x in row) == 0:
    raise ValueError("a candidate is empty (no tokens to score)")
  cand_len = longest if cand_len is None else cand_len
  if longest > cand_len:
    raise ValueError(f"cand_len={cand_len} is shorter than the longest candidate ({longest})")
  if not (np.asarray(prompt_batch["segment_ids"])[:, -1] > 0).all():
    raise ValueError("prompt batch must be left-padded (its last position real in every row)")

  rep = lambda x: np.repeat(np.asarray(x), c, axis=0)
  out = {k: rep(v) for k, v in prompt_batch.items() if k != "encoders"}
  out["encoders"] = jax.tree.map(rep, dict(prompt_batch["encoders"]))
  width = length + cand_len
  grow = lambda x, fill: np.concatenate(
      [x, np.full((x.shape[0], cand_len), fill, x.dtype)], axis=1)
  out["tokens"] = grow(out["tokens"], pad_id)
  out["targets"] = np.full((b * c, width), pad_id, np.int32)
  out["loss_mask"] = np.zeros((b * c, width), np.float32)
  out["segment_ids"] = grow(out["segment_ids"], 0)
  out["positions"] = grow(out["positions"], 0)
  out["dock_index"] = grow(out["dock_index"], 0)
  out["dock_mask"] = grow(out["dock_mask"], False)
  for r in range(b * c):
    ids = list(candidates[r // c][r % c])
    n = len(ids)
    out["tokens"][r, length:length + n] = ids
    out["segment_ids"][r, length:length + n] = out["segment_ids"][r, length - 1]
    out["positions"][r, length:length + n] = out["positions"][r, length - 1] + 1 + np.arange(n)
    out["targets"][r, :width - 1] = out["tokens"][r, 1:]
    out["targets"][r, length + n - 1:] = pad_id
    out["loss_mask"][r, length - 1:length - 1 + n] = 1.0
  return out


def score_candidates(model: MetaLM, params, prompt_batch, candidates, pad_id: int,
                     cand_len: int | None = None) -> Scores:
  """Scores [B, C]: log-likelihood of candidates[b][c] after prompt b."""
  b = np.shape(prompt_batch["tokens"])[0]
  c = len(candidates[0]) if len(candidates) else 0
  batch = append_candidates(prompt_batch, candidates, pad_id, cand_len)
  limit = model.cfg.decoder.max_len
  if model.cfg.decoder.positions != "rotary" and batch["positions"].max() >= limit:
    raise ValueError(f"prompt + candidate reaches position {batch['positions'].max()}, "
                     f"beyond model.decoder.max_len={limit}")
  s = sequence_logprobs(model, params, jax.tree.map(jnp.asarray, batch))
  return Scores(*(x.reshape(b, c) for x in s))


def score_choices(model: MetaLM, params, prompt_batch, choices: Sequence[Sequence[int]],
                  pad_id: int) -> Scores:
  """Scores [B, C] for the same candidates after every prompt (label words)."""
  b = np.shape(prompt_batch["tokens"])[0]
  return score_candidates(model, params, prompt_batch, [list(choices)] * b, pad_id)


def rank(scores: Scores, by: str = "sum") -> np.ndarray:
  """Index [B] of the best candidate by 'sum' or 'mean' log-prob."""
  if by not in ("sum", "mean"):
    raise ValueError(f"by={by!r}; expected 'sum' or 'mean'")
  return np.asarray(jnp.argmax(getattr(scores, by), -1))
