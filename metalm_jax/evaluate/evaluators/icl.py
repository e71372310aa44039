"""`icl`: in-context learning. For k in `shots`: k demonstrations from the
train split (each laid out as its training row: input through the encoders
on its own items, prompt, label as plain tokens, `</s>`; prompts.icl_parts),
then the query; label formats rank the label words, VQA and
caption formats generate (VQA accuracy; BLEU-4 / CIDEr). The encoders'
`max_items` are raised to what k + 1 examples need on a copy of the model
config (params do not depend on max_items). Each row's per-k entry carries
the example's `score` (1.0 / 0.0 ranked label, VQA accuracy, or CIDEr) and,
for label formats, the gold `label`: the pairing data of evaluate/stats.py."""
from __future__ import annotations

from typing import Any, Dict, List, Sequence

import ml_collections
import numpy as np

from metalm_jax.evaluate import metrics as metrics_lib
from metalm_jax.evaluate import prompts
from metalm_jax.evaluate.evaluators import caption, common, examples, predict
from metalm_jax.models import metalm


def items_needed(parts: Sequence[Any], model_cfg) -> Dict[str, int]:
  """Encoder items a prompt uses, per encoder name."""
  need: Dict[str, int] = {}
  for p in parts:
    t = prompts.part_encoder_type(p)
    if t is None:
      continue
    name = p.encoder or [n for n in sorted(model_cfg.encoders)
                         if model_cfg.encoders[n].type == t][0]
    need[name] = need.get(name, 0) + 1
  return need


def with_max_items(model, need: Dict[str, int]):
  """`model` rebuilt with encoders' max_items raised to `need`; `model`
  itself when nothing changes. The params stay valid: encoder parameters do
  not depend on max_items (flax raises a shape error if a future encoder's did)."""
  cfg = model.cfg
  if all(cfg.encoders[n].max_items >= k for n, k in need.items()):
    return model
  new = ml_collections.ConfigDict(cfg.to_dict())
  for n, k in need.items():
    new.encoders[n].max_items = max(k, cfg.encoders[n].max_items)
  return metalm.build_model(new)


def demonstrations(pool: Sequence[common.Example], num_queries: int, k_max: int,
                   seed: int) -> List[List[common.Example]]:
  """Per query, k_max distinct pool examples in a seeded random order; a run
  with k shots uses the first k of them (so k=1 demos are part of k=4's)."""
  if k_max > len(pool):
    raise ValueError(f"evals icl: shots up to {k_max} but the demonstration pool has "
                     f"{len(pool)} examples")
  out = []
  for q in range(num_queries):
    order = np.random.default_rng([seed, q]).permutation(len(pool))[:k_max]
    out.append([pool[int(i)] for i in order])
  return out


def model_for(model, batch_prompts: Sequence[Sequence[Any]]):
  """`model` with its encoders' max_items raised to what the longest of
  `batch_prompts` needs (`with_max_items`)."""
  need: Dict[str, int] = {}
  for p in batch_prompts:
    for n, c in items_needed(p, model.cfg).items():
      need[n] = max(need.get(n, 0), c)
  return with_max_items(model, need)


def _score(env, ev, fmt, model, batch_prompts, exs, k, out):
  """(predictions, per-example scores) for one k; adds its metrics to `out`.
  Scores: 1.0 / 0.0 for a ranked label, VQA accuracy, or the example's
  CIDEr (its mean is the corpus CIDEr)."""
  if fmt.labels:
    ranked, _ = predict.rank_choices(env, model, env.params, batch_prompts, fmt.labels, ev)
    scores = [float(r == e.label_id) for r, e in zip(ranked, exs)]
    out[f"k{k}/accuracy"] = common.mean(scores, f"icl k={k} accuracy")
    return [fmt.labels[i] for i in ranked], scores
  preds = predict.generate_texts(env, model, env.params, batch_prompts, ev)
  if fmt.answer == "answers":
    scores = [metrics_lib.vqa_accuracy(p, e.refs) for p, e in zip(preds, exs)]
    out[f"k{k}/accuracy"] = common.mean(scores, f"icl k={k} accuracy")
    return preds, scores
  keys = [str(e.index) for e in exs]
  s, cider = caption.caption_scores({key: p or "." for key, p in zip(keys, preds)},
                                    {key: e.refs for key, e in zip(keys, exs)}, False,
                                    ("BLEU-4", "CIDEr"))
  out[f"k{k}/CIDEr"], out[f"k{k}/BLEU-4"] = s["CIDEr"], s["BLEU-4"]
  return preds, [cider[key] for key in keys]


@common.register("icl", shots=(0, 1, 4), demo_split="train", demo_pool=256, max_new_tokens=8)
def eval_icl(env: common.Env, ev):
  fmt = examples.format_of(ev)
  shots = examples.shots_of(ev, "icl")
  exs, skipped = examples.load_examples(env, ev, ev.split, int(ev.num_examples), ev.seed)
  pool, _ = examples.load_examples(env, ev, ev.demo_split, int(ev.demo_pool), ev.seed + 1)
  demos = demonstrations(pool, len(exs), shots[-1], ev.seed + 2)
  out: Dict[str, float] = {"examples": len(exs), "skipped": skipped}
  rows: List[Dict[str, Any]] = [{"index": e.index, "references": e.refs} for e in exs]
  for k in shots:
    batch_prompts = [prompts.icl_parts([(d.parts, d.label) for d in ds[:k]], e.parts,
                                       env.tokenizer) for ds, e in zip(demos, exs)]
    model = model_for(env.model, batch_prompts)
    preds, scores = _score(env, ev, fmt, model, batch_prompts, exs, k, out)
    for row, pr, p, sc, e in zip(rows, batch_prompts, preds, scores, exs):
      row[f"k{k}"] = {"prompt": common.prompt_text(pr), "prediction": p, "score": sc}
      if fmt.labels:
        row[f"k{k}"]["label"] = fmt.labels[e.label_id]
  return out, rows
