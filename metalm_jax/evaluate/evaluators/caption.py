"""`caption`: the format's docked input (an image, a sound clip, a video)
and prompt (default: the format's evaluation prompt, "Summarize this image:"
/ "Describe this sound:" / "Describe this video:" zero-shot after
pretraining, "caption:" for the finetuning formats), generated caption;
BLEU-4, CIDEr (pycocoevalcap), METEOR / SPICE when `meteor` is None (auto:
Java present) or True, and the scores of always giving the most frequent
training caption. Rows carry each example's CIDEr (`CIDEr`, and the fixed
caption's as `fixed_CIDEr`): the corpus CIDEr is their mean, so two runs
compare example by example (evaluate/stats.py)."""
from __future__ import annotations

import logging
from typing import Dict, List, Sequence, Tuple

from metalm_jax.evaluate import metrics as metrics_lib
from metalm_jax.evaluate.evaluators import common, examples, predict


def caption_scores(preds: Dict[str, str], refs: Dict[str, List[str]], meteor,
                   keys: Sequence[str]) -> Tuple[Dict[str, float], Dict[str, float]]:
  """(pycocoevalcap scores `keys` (those it computed), {id: the id's CIDEr});
  NaN scores, no ids and a warning with no captions."""
  if not preds:
    logging.warning("caption metrics over no examples: NaN")
    return {k: float("nan") for k in keys if k in ("BLEU-4", "CIDEr")}, {}
  scores, per_example = metrics_lib.caption_metrics_per_example(
      preds, {k: refs[k] for k in preds}, meteor=meteor, spice=meteor)
  return {k: v for k, v in scores.items() if k in keys}, per_example["CIDEr"]


@common.register("caption", max_new_tokens=32, meteor=None)
def eval_caption(env: common.Env, ev):
  exs, skipped = examples.load_examples(env, ev, ev.split, int(ev.num_examples), ev.seed)
  preds = predict.generate_texts(env, env.model, env.params, [e.parts for e in exs], ev)
  keys = [str(e.index) for e in exs]
  refs = {k: e.refs for k, e in zip(keys, exs)}
  scores, cider = caption_scores({k: p or "." for k, p in zip(keys, preds)}, refs,
                                 ev.meteor, ("BLEU-4", "CIDEr", "METEOR", "SPICE"))
  out = dict(scores, examples=len(exs), skipped=skipped)
  columns = {"CIDEr": [cider[k] for k in keys]}
  if ev.num_baseline_examples:
    fixed, _ = examples.train_majority(env, ev)
    base, fixed_cider = caption_scores({k: fixed for k in keys if fixed is not None}, refs,
                                       False, ("BLEU-4", "CIDEr"))
    out["fixed_caption_BLEU-4"] = base["BLEU-4"]
    out["fixed_caption_CIDEr"] = base["CIDEr"]
    if fixed is not None:  # no training caption: no per-example baseline (never NaN rows)
      columns["fixed_CIDEr"] = [fixed_cider[k] for k in keys]
  return out, common.records(exs, preds, **columns)
