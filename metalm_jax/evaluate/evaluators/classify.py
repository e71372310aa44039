"""`classify`: the format's label words (NLI, NLVR2-style pairs), generated
and ranked by log-likelihood; accuracy both ways, chance and majority class.
Rows carry the gold `label` word and whether each way was right
(`correct_rank`, `correct_generate`; `generated_correct` is the older name
of the latter), the pairing data of evaluate/stats.py."""
from __future__ import annotations

import collections

import numpy as np

from metalm_jax.evaluate.evaluators import common, examples, predict


@common.register("classify", max_new_tokens=8)  # label words can be several pieces
def eval_classify(env: common.Env, ev):
  fmt = examples.format_of(ev)
  if not fmt.labels:
    raise ValueError(f"evals classify: format {fmt.name!r} has no label words")
  exs, skipped = examples.load_examples(env, ev, ev.split, int(ev.num_examples), ev.seed)
  batch_prompts = [e.parts for e in exs]
  labels = np.array([e.label_id for e in exs], int)
  gen = predict.generate_texts(env, env.model, env.params, batch_prompts, ev)
  gen_ok = [bool(predict.clean_label(g) == fmt.labels[y]) for g, y in zip(gen, labels)]
  ranked, _ = predict.rank_choices(env, env.model, env.params, batch_prompts, fmt.labels, ev)
  rank_ok = [bool(r == y) for r, y in zip(ranked, labels)]
  top = collections.Counter(labels.tolist()).most_common(1)
  out = {"accuracy_generate": common.mean(gen_ok, "classify accuracy (generated)"),
         "accuracy_rank": common.mean(rank_ok, "classify accuracy (ranked)"),
         "chance": 1.0 / len(fmt.labels),
         "majority_class": common.mean([int(y == top[0][0]) for y in labels] if top else [],
                                       "classify majority class"),
         "examples": len(exs), "skipped": skipped}
  return out, common.records(exs, gen, ranked=[fmt.labels[i] for i in ranked],
                             label=[fmt.labels[y] for y in labels], correct_rank=rank_ok,
                             correct_generate=gen_ok, generated_correct=gen_ok)
