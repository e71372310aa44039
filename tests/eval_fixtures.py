"""Helpers shared by the evaluator and format tests (not a test module)."""
import copy

import numpy as np

from metalm_jax.data import formats, pipeline, tasks
from metalm_jax.evaluate import evaluators as E
from metalm_jax.evaluate import prompts
from metalm_jax.models import metalm


def append_tokens(row, ids, pad):
  """Appends plain tokens to a one-row prompt batch (positions continue)."""
  out = {k: v for k, v in row.items()}
  n = len(ids)
  cat = lambda x, vals: np.concatenate([x, np.asarray(vals, x.dtype)[None]], 1)
  last = int(row["positions"][0, -1])
  out["tokens"] = cat(row["tokens"], ids)
  out["targets"] = cat(row["targets"], [pad] * n)
  out["loss_mask"] = cat(row["loss_mask"], [0.0] * n)
  out["segment_ids"] = cat(row["segment_ids"], [1] * n)
  out["positions"] = cat(row["positions"], list(range(last + 1, last + 1 + n)))
  out["dock_index"] = cat(row["dock_index"], [0] * n)
  out["dock_mask"] = cat(row["dock_mask"], [False] * n)
  return out


def eval_env(cfg, tok):
  """An evaluators Env over `cfg` (no params: for building prompts only)."""
  return E.Env(cfg, metalm.build_model(cfg.model), None, tok, 0)


def assert_row_matches_prompt(cfg, tok, name, fields, index, env=None):
  """Builds the row (tasks.TASKS) and the prompt (evaluators) and checks them
  (`env`: the evaluators' Env, default one over `cfg`)."""
  fmt = formats.FORMATS.get(name)
  ctx = pipeline.make_context(cfg, tok)
  rng = np.random.default_rng([0, 0, index])
  drawn = fmt.template(copy.deepcopy(rng))  # the template the row draws first
  stats = tasks.new_stats()
  out = tasks.TASKS.get(name)(ctx, copy.deepcopy(fields), rng, stats)
  assert out["ok"], (name, {k: int(v) for k, v in stats.items()})
  row = out["row"]
  prompt = "" if name == "caption" else drawn  # pretraining captions have no prompt
  ev = E.resolve(dict(type="classify" if fmt.labels else "vqa", prompt=prompt))
  ex = E.make_example(fmt, fields, env or eval_env(cfg, tok), ev)
  b = prompts.build_batch([ex.parts], tok, cfg.model)
  n = b["tokens"].shape[1]
  for key in ("tokens", "dock_mask", "dock_index", "positions"):
    np.testing.assert_array_equal(b[key][0], row[key][:n], err_msg=f"{name} {key}")
  for enc, arrays in b["encoders"].items():  # the items the prompt uses
    used = arrays["valid"][0] if "valid" in arrays else arrays["mask"][0].any(-1)
    for key, x in arrays.items():
      np.testing.assert_allclose(x[0][used], row["encoders"][enc][key][used], atol=1e-6,
                                 err_msg=f"{name} {enc}.{key}")
  # After the prompt: the answer then </s>, and nothing else (up to padding).
  real = int((row["segment_ids"] > 0).sum())
  rest = list(row["tokens"][n:real])
  answers = [ex.label] if fmt.answer != "captions" else ex.refs
  assert any(rest == tok.encode(a) + [tok.eod] for a in answers), (name, tok.decode(rest))
  trained = np.flatnonzero(row["loss_mask"])
  assert trained[-1] == real - 2 and row["targets"][real - 2] == tok.eod
  first = n + int(row["dock_mask"][n:real].sum())  # a caption prefix is docked, not trained
  np.testing.assert_array_equal(trained, np.arange(first - 1, real - 1))
  if fmt.answer != "captions":
    assert ex.label == fmt.target(fmt.parse(fields)[0])
  return ex, row
