"""`vqa`: the format's docked inputs (an image, a sound clip, a video, or an
image with a sound) and question prompt (the format's template), generated
answer; VQAv2 accuracy, and the accuracy of always answering the most
frequent training answer. Rows carry both per example (`accuracy`,
`majority_accuracy`), so "MetaLM vs the majority answer" is a paired
comparison (evaluate/stats.py)."""
from __future__ import annotations

from metalm_jax.evaluate import metrics as metrics_lib
from metalm_jax.evaluate.evaluators import common, examples, predict


@common.register("vqa", max_new_tokens=8)
def eval_vqa(env: common.Env, ev):
  exs, skipped = examples.load_examples(env, ev, ev.split, int(ev.num_examples), ev.seed)
  preds = predict.generate_texts(env, env.model, env.params, [e.parts for e in exs], ev)
  acc = [metrics_lib.vqa_accuracy(p, e.refs) for p, e in zip(preds, exs)]
  out = {"accuracy": common.mean(acc, "vqa accuracy"), "examples": len(exs), "skipped": skipped}
  columns = {"accuracy": acc}
  if ev.num_baseline_examples:
    answer, _ = examples.train_majority(env, ev)
    # No training answer: no per-example column (rows stay NaN-free), a NaN metric.
    base = [] if answer is None else [metrics_lib.vqa_accuracy(answer, e.refs) for e in exs]
    out["majority_answer_accuracy"] = common.mean(base, "vqa majority-answer baseline")
    if answer is not None:
      columns["majority_accuracy"] = base
  return out, common.records(exs, preds, **columns)
