"""`classify`: the format's label words (NLI, NLVR2-style pairs), generated
and ranked by log-likelihood; accuracy both ways, chance and majority class."""
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
  labels = np.array([e.label_id for e in exs])
  gen = predict.generate_texts(env, env.model, env.params, batch_prompts, ev)
  gen_ok = np.array([predict.clean_label(g) == fmt.labels[y] for g, y in zip(gen, labels)])
  ranked, _ = predict.rank_choices(env, env.model, env.params, batch_prompts, fmt.labels, ev)
  top = collections.Counter(labels.tolist()).most_common(1)
  out = {"accuracy_generate": common.mean(gen_ok, "classify accuracy (generated)"),
         "accuracy_rank": common.mean(ranked == labels, "classify accuracy (ranked)"),
         "chance": 1.0 / len(fmt.labels),
         "majority_class": common.mean([int(y == top[0][0]) for y in labels] if top else [],
                                       "classify majority class"),
         "examples": len(exs), "skipped": skipped}
  return out, common.records(exs, gen, ranked=[fmt.labels[i] for i in ranked],
                             generated_correct=[bool(x) for x in gen_ok])
