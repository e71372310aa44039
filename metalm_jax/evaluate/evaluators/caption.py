"""`caption`: the format's docked input (an image, a sound clip, a video)
and prompt (default: the format's evaluation prompt, "Summarize this image:"
/ "Describe this sound:" / "Describe this video:" zero-shot after
pretraining, "caption:" for the finetuning formats), generated caption;
BLEU-4, CIDEr (pycocoevalcap), METEOR / SPICE when `meteor` is None (auto:
Java present) or True, and the scores of always giving the most frequent
training caption."""
from __future__ import annotations

import logging
from typing import Dict, List, Sequence

from metalm_jax.evaluate import metrics as metrics_lib
from metalm_jax.evaluate.evaluators import common, examples, predict


def caption_scores(preds: Dict[str, str], refs: Dict[str, List[str]], meteor,
                   keys: Sequence[str]) -> Dict[str, float]:
  """pycocoevalcap scores `keys` (those it computed); NaN and a warning with no captions."""
  if not preds:
    logging.warning("caption metrics over no examples: NaN")
    return {k: float("nan") for k in keys if k in ("BLEU-4", "CIDEr")}
  scores = metrics_lib.caption_metrics(preds, {k: refs[k] for k in preds}, meteor=meteor,
                                       spice=meteor)
  return {k: v for k, v in scores.items() if k in keys}


@common.register("caption", max_new_tokens=32, meteor=None)
def eval_caption(env: common.Env, ev):
  exs, skipped = examples.load_examples(env, ev, ev.split, int(ev.num_examples), ev.seed)
  preds = predict.generate_texts(env, env.model, env.params, [e.parts for e in exs], ev)
  refs = {str(e.index): e.refs for e in exs}
  scores = caption_scores({str(e.index): p or "." for e, p in zip(exs, preds)}, refs,
                          ev.meteor, ("BLEU-4", "CIDEr", "METEOR", "SPICE"))
  out = dict(scores, examples=len(exs), skipped=skipped)
  if ev.num_baseline_examples:
    fixed, _ = examples.train_majority(env, ev)
    base = caption_scores({str(e.index): fixed for e in exs if fixed is not None}, refs,
                          False, ("BLEU-4", "CIDEr"))
    out["fixed_caption_BLEU-4"] = base["BLEU-4"]
    out["fixed_caption_CIDEr"] = base["CIDEr"]
  return out, common.records(exs, preds)
