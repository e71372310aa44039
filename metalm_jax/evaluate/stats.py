"""Intervals for "MetaLM vs a baseline" claims: a paired bootstrap over the
evaluation examples, from the per-example scores the evaluators write
(<name>_step_<step>.jsonl rows, paired by their record `index`).

    a, b = align(metalm_rows, blind_rows)
    paired_bootstrap([column(a, "accuracy")], [column(b, "accuracy")])
    # {"metalm": .., "baseline": .., "diff": .., "ci95": [low, high], "n": .., "seeds": 1, ...}

Several training seeds of MetaLM (and of the baseline, or one baseline for
all of them, e.g. a pretrained blind model) are pooled: the examples are the
same in every seed, so one draw of examples serves every seed and the
statistic is the mean difference over seeds and drawn examples. Pure numpy.
"""
from __future__ import annotations

import collections
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

# A model whose most frequent prediction takes more than this share of the
# examples is answering one class (`verdict` flags it).
SINGLE_CLASS_SHARE = 0.9


def _per_seed(values, what: str) -> List[np.ndarray]:
  """`values` (a list of 1-D arrays, one per seed; a bare 1-D array is one
  seed) as float64 arrays; non-finite values are errors."""
  if isinstance(values, np.ndarray) and values.ndim == 1:
    values = [values]
  out = []
  for s, v in enumerate(values):
    a = np.asarray(v, np.float64)
    if a.ndim != 1:
      raise ValueError(f"{what}[{s}] has shape {a.shape}; expected one 1-D array per seed")
    bad = np.flatnonzero(~np.isfinite(a))
    if bad.size:
      raise ValueError(f"{what}[{s}] has {bad.size} non-finite (NaN / inf) scores, "
                       f"the first at example {int(bad[0])}")
    out.append(a)
  if not out:
    raise ValueError(f"{what} has no seeds")
  return out


def paired_bootstrap(metalm, baseline, *, num_samples: int = 2000, seed: int = 0,
                     level: float = 0.95) -> Dict[str, Any]:
  """Mean scores, their difference and its bootstrap interval.

  `metalm`, `baseline`: per seed, the 1-D scores of the same examples in the
  same order (every array of one length n). The baseline has as many seeds as
  MetaLM (paired seed by seed) or one (paired with each MetaLM seed).
  Each of `num_samples` resamples draws n example indices with replacement
  (`numpy.random.default_rng(seed).integers(0, n, size=n)`, one draw per
  resample, shared by all seeds); its statistic is the mean over seeds and
  drawn examples of metalm - baseline. The interval holds the central
  `level` of the statistics (linear-interpolated percentiles); its key is
  "ci95" whatever `level` (also returned).

  Returns {metalm, baseline, diff, ci95: [low, high], n, seeds, level}."""
  m = _per_seed(metalm, "metalm")
  b = _per_seed(baseline, "baseline")
  if len(b) not in (1, len(m)):
    raise ValueError(f"baseline has {len(b)} seeds, metalm {len(m)}: the baseline needs one "
                     "seed or one per metalm seed")
  lengths = sorted({len(a) for a in m + b})
  if len(lengths) != 1:
    raise ValueError(f"metalm seeds have {[len(a) for a in m]} examples and baseline seeds "
                     f"{[len(a) for a in b]}: every seed must score the same examples")
  n = lengths[0]
  if n == 0:
    raise ValueError("no examples to compare")
  if not 0 < level < 1:
    raise ValueError(f"level={level} must be in (0, 1)")
  if num_samples < 1:
    raise ValueError(f"num_samples={num_samples} must be >= 1")
  m2 = np.stack(m)
  b2 = np.stack(b if len(b) == len(m) else b * len(m))
  # The statistic is linear: the mean over seeds and drawn examples equals the
  # mean over drawn examples of each example's seed-mean difference.
  per_example = (m2 - b2).mean(0)
  rng = np.random.default_rng(seed)
  stats = np.empty(num_samples)
  for i in range(num_samples):
    stats[i] = per_example[rng.integers(0, n, size=n)].mean()
  tail = (1.0 - level) / 2.0
  low, high = np.percentile(stats, [100.0 * tail, 100.0 * (1.0 - tail)])
  return {"metalm": float(m2.mean()), "baseline": float(b2.mean()),
          "diff": float(per_example.mean()), "ci95": [float(low), float(high)],
          "n": int(n), "seeds": len(m), "level": float(level)}


def align(rows_a: Sequence[Mapping[str, Any]], rows_b: Sequence[Mapping[str, Any]],
          key: str = "index") -> Tuple[List[Mapping[str, Any]], List[Mapping[str, Any]]]:
  """(rows_a, rows_b reordered to match): the rows of two runs paired by
  `key` (the record index), in rows_a's order. Different key sets, a
  repeated key or a row without it are errors."""
  def by_key(rows, what):
    out = {}
    for i, r in enumerate(rows):
      if key not in r:
        raise ValueError(f"{what}[{i}] has no {key!r} column")
      if r[key] in out:
        raise ValueError(f"{what} has {key}={r[key]!r} twice")
      out[r[key]] = r
    return out
  a, b = by_key(rows_a, "rows_a"), by_key(rows_b, "rows_b")
  only_a = [k for k in a if k not in b]
  only_b = [k for k in b if k not in a]
  if only_a or only_b:
    raise ValueError(f"rows do not pair by {key!r}: {len(only_a)} of rows_a's {len(a)} are "
                     f"missing from rows_b (e.g. {only_a[:5]}), {len(only_b)} of rows_b's "
                     f"{len(b)} are missing from rows_a (e.g. {only_b[:5]})")
  return list(a.values()), [b[k] for k in a]


def lookup(row: Mapping[str, Any], name: str, where: str = "row") -> Any:
  """row[name]; "k4.score" reads a per-k entry (icl / episode rows). A
  missing column is an error naming `where`."""
  v: Any = row
  for part in name.split("."):
    if not isinstance(v, Mapping) or part not in v:
      raise ValueError(f"{where} has no {name!r} column")
    v = v[part]
  return v


def column(rows: Sequence[Mapping[str, Any]], name: str) -> np.ndarray:
  """The float64 scores of `name` (see `lookup`) in every row. Booleans
  count 1 / 0. A missing column is an error."""
  return np.asarray([float(lookup(r, name, f"rows[{i}]")) for i, r in enumerate(rows)],
                    np.float64)


def majority_share(predictions: Sequence[Any]) -> float:
  """The share of the examples given the most frequent prediction (NaN for
  none); above SINGLE_CLASS_SHARE the model answers one class."""
  if not len(predictions):
    return float("nan")
  counts = collections.Counter(predictions)
  return counts.most_common(1)[0][1] / len(predictions)


def verdict(metalm, baseline, predictions: Optional[Sequence[Any]] = None, *,
            num_samples: int = 2000, seed: int = 0) -> Dict[str, Any]:
  """`paired_bootstrap` of the scores, and whether the claim holds: only when
  the interval lies above 0 and MetaLM (its `predictions`, pooled over seeds)
  does not answer one class (> SINGLE_CLASS_SHARE of the examples; flagged).
  Adds majority_prediction_share (None without predictions), flags, holds."""
  res = paired_bootstrap(metalm, baseline, num_samples=num_samples, seed=seed)
  share = None if predictions is None else majority_share(list(predictions))
  flags = ([f"single class: one prediction for {share:.0%} of examples"]
           if share is not None and share > SINGLE_CLASS_SHARE else [])
  return {**res, "majority_prediction_share": share, "flags": flags,
          "holds": bool(res["ci95"][0] > 0 and not flags)}
