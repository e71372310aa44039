"""`episode`: in-context learning where only the demonstrations tell what the
query needs (invented label names bound to images or texts within one
record). A record of an episode source (task "episode_image" /
"episode_text") holds `items`, each {image, text, label}: all but the last
are the demonstrations, the last is the query. Each item is an Example of
its task's item format (data/formats.py EPISODE_ITEM_FORMATS, a label
format; or the evaluator's `format`). For k in `shots`: the first k
demonstrations laid out as training rows (prompts.icl_parts), then the
query; the label words are ranked by log-likelihood (icl.py raises the
encoders' max_items on a copy of the model). Metrics per k: `accuracy` and
`majority_share` (the share of the most frequent predicted label: a model
answering one class scores chance while looking busy; the caller flags
shares above stats.SINGLE_CLASS_SHARE). Rows: index, references and
per k {prompt, prediction, score (1.0 / 0.0), label}."""
from __future__ import annotations

from typing import Any, Dict, List, Tuple

from metalm_jax.data import formats as formats_lib
from metalm_jax.evaluate import prompts, stats
from metalm_jax.evaluate.evaluators import common, examples, icl, predict
from metalm_jax.data import sources


def item_format(ev) -> formats_lib.Format:
  """The evaluator's `format`, or the item format its source's task maps to."""
  if ev.format:
    return formats_lib.FORMATS.get(ev.format)
  task = sources.SOURCES.get(ev.source).task
  mapping = formats_lib.EPISODE_ITEM_FORMATS
  if task not in mapping:
    raise ValueError(f"evals episode: source {ev.source!r} has task {task!r}, which "
                     f"formats.EPISODE_ITEM_FORMATS ({sorted(mapping)}) does not map to an "
                     "item format; use an episode source or set the evaluator's `format`")
  return formats_lib.FORMATS.get(mapping[task])


def load_episodes(env: common.Env, ev, fmt: formats_lib.Format, split: str, num: int,
                  seed: int, num_items: int) -> Tuple[List[List[common.Example]], int]:
  """The first `num` usable records of `ev.source`/`split` as lists of item
  Examples (index: the record's), each with at least `num_items` items;
  returns (episodes, skipped). A record with an unusable item (bad label,
  empty text, unreadable image) is skipped whole (examples.load_records:
  blind items, counters, warnings)."""
  def make(i, fields, counts):
    items = fields["items"]
    if len(items) < num_items:
      raise ValueError(f"evals episode: record {i} of {ev.source}/{split} has {len(items)} "
                       f"items; shots up to {num_items - 1} need {num_items}")
    exs = [examples.make_example(fmt, item, env, ev, counts) for item in items]
    return None if any(e is None for e in exs) else exs
  return examples.load_records(env, ev, split, num, seed, make)


def episode_prompts(episodes: List[List[common.Example]], k: int, tokenizer) -> List[List[Any]]:
  """Per episode: its first k demonstrations (input, label word, `</s>`),
  then its query (the last item)."""
  return [prompts.icl_parts([(d.parts, d.label) for d in ep[:k]], ep[-1].parts, tokenizer)
          for ep in episodes]


@common.register("episode", shots=(0, 1, 2, 4))
def eval_episode(env: common.Env, ev):
  fmt = item_format(ev)
  if not fmt.labels:
    raise ValueError(f"evals episode: item format {fmt.name!r} has no label words")
  shots = examples.shots_of(ev, "episode")
  episodes, skipped = load_episodes(env, ev, fmt, ev.split, int(ev.num_examples), ev.seed,
                                    shots[-1] + 1)
  queries = [ep[-1] for ep in episodes]
  out: Dict[str, float] = {"examples": len(episodes), "skipped": skipped,
                           "chance": 1.0 / len(fmt.labels)}
  rows: List[Dict[str, Any]] = [{"index": q.index, "references": q.refs} for q in queries]
  for k in shots:
    batch_prompts = episode_prompts(episodes, k, env.tokenizer)
    model = icl.model_for(env.model, batch_prompts)
    ranked, _ = predict.rank_choices(env, model, env.params, batch_prompts, fmt.labels, ev)
    preds = [fmt.labels[i] for i in ranked]
    scores = [float(r == q.label_id) for r, q in zip(ranked, queries)]
    out[f"k{k}/accuracy"] = common.mean(scores, f"episode k={k} accuracy")
    out[f"k{k}/majority_share"] = stats.majority_share(preds)
    for row, pr, p, sc, q in zip(rows, batch_prompts, preds, scores, queries):
      row[f"k{k}"] = {"prompt": common.prompt_text(pr), "prediction": p, "score": sc,
                      "label": fmt.labels[q.label_id]}
  return out, rows
