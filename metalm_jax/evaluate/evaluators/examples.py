"""Evaluation examples from a data source, laid out by the task's format
(data/formats.py, the same definition the training rows follow): images,
sound clips and videos on their own encoder items (loaded as the pipeline
loads them, models/modalities/), the encoded text on the text encoder the
pipeline uses (config.data.spans.encoder) cut and split at the same token
boundaries as in training, then the prompt; the answer is the example's label."""
from __future__ import annotations

import collections
import dataclasses
import logging
from typing import Any, Callable, List, Optional, Tuple

import numpy as np

from metalm_jax import batch as batch_lib
from metalm_jax.data import formats as formats_lib
from metalm_jax.evaluate import prompts
from metalm_jax.evaluate.evaluators.common import Env, Example
from metalm_jax.models import modalities
from metalm_jax.data import pipeline, sources


def format_of(ev) -> formats_lib.Format:
  """The evaluator's `format`, or that of its source's task."""
  if ev.format:
    return formats_lib.FORMATS.get(ev.format)
  return formats_lib.FORMATS.get(sources.SOURCES.get(ev.source).task)


_PARTS = {"image": prompts.Image, "audio": prompts.Audio, "video": prompts.Video}


def _media_part(env: Env, kind: str, value, stats: Optional[dict] = None):
  """A docked input of media `kind` as the pipeline loads it (its modality's loader):
  the prompt part, or None when unusable (`stats`: the loader's counters)."""
  m = modalities.MODALITIES.get(kind)
  names = [n for n in sorted(env.model.cfg.encoders)
           if env.model.cfg.encoders[n].type == m.encoder_type]
  if not names:
    raise ValueError(f"{kind} evaluation needs a {m.encoder_type!r} encoder in "
                     "config.model.encoders")
  data = env.config.data
  x = m.load(value, env.model.cfg.encoders[names[0]],
             (tuple(data.image_mean), tuple(data.image_std)), {} if stats is None else stats)
  return None if x is None else _PARTS[kind](x)


def encoded_parts(env: Env, fmt: formats_lib.Format, text: str) -> List[Any]:
  """`text` for the text encoder as the pipeline lays it out: EncodedText
  parts of consecutive max_len-token pieces over at most
  `fmt.encoder_items` items (the rest cut), or plain Text when the run sends
  no text to an encoder (config.data.spans.encoder empty)."""
  name = env.config.data.spans.encoder
  if not name:
    if fmt.encoded_items == "one":
      raise ValueError(f"format {fmt.name!r} needs config.data.spans.encoder (a text encoder)")
    return [prompts.Text(text)]
  enc = env.model.cfg.encoders[name]
  size = batch_lib.slot_length(enc)
  ids = env.tokenizer.encode(text)
  cap = size * fmt.encoder_items(enc)
  if len(ids) > cap:
    logging.info("evaluation: encoder text cut to %d tokens: %r", cap, text)
  return [prompts.EncodedText(env.tokenizer.decode(c), encoder=name, ids=tuple(c))
          for c in formats_lib.chunks(ids[:cap], size)]


def make_example(fmt: formats_lib.Format, fields, env: Env, ev,
                 stats: Optional[dict] = None) -> Optional[Example]:
  """The query prompt and answer of one record; None for a record the
  pipeline would skip (bad label, empty text, unreadable image, sound clip
  or video), counted in `stats` under the pipeline's names (data/tasks.py)."""
  stats = {} if stats is None else stats
  parsed, why = fmt.parse(fields)
  if parsed is None:
    stats[why] = stats.get(why, 0) + 1
    return None
  parts: List[Any] = [_media_part(env, kind, parsed.fields[k], stats)
                      for kind, k in fmt.media()]
  if any(p is None for p in parts):
    return None
  if fmt.encoded:
    parts += encoded_parts(env, fmt, fmt.encoder_text(parsed))
  template = fmt.eval_template(ev.prompt)
  if template:
    parts.append(prompts.Text(fmt.prompt(parsed, template)))
  return Example(0, parts, fmt.target(parsed), parsed.refs, parsed.label_id)


def blank(part):
  """A docked media part (prompts.Image / Audio / Video) with its array all
  zeros (silence; a flat frame at the normalisation mean); other parts as they are."""
  if type(part) not in prompts.MEDIA_PARTS:
    return part
  name = dataclasses.fields(part)[0].name  # pixels / waveform / frames
  return dataclasses.replace(part, **{name: np.zeros_like(np.asarray(getattr(part, name)))})


def load_records(env: Env, ev, split: str, num: int, seed: int,
                 make: Callable[[int, Any, dict], Optional[List[Example]]]
                 ) -> Tuple[List[List[Example]], int]:
  """The first `num` usable records of `ev.source`/`split`, each as the
  Examples `make(index, fields, counts)` builds from its fields (extraction seeded
  per record; None: unusable, counted in `counts` under the pipeline's names),
  in record order with the record's index; returns (per record, skipped).
  `ev.blind`: media parts blanked (`blank`), records chosen as without."""
  if not ev.source:
    raise ValueError("evals.*.source is empty; name a data source (metalm_jax/data/sources.py)")
  src = sources.SOURCES.get(ev.source)
  records = pipeline.data_source(env.config.data, ev.source, split)
  out, skipped, counts = [], 0, {}  # counts: why records were skipped
  for i in range(len(records)):
    if len(out) >= num:
      break
    exs = make(i, src.extract(records[i], np.random.default_rng([seed, i])), counts)
    if exs is None:
      skipped += 1
      continue
    for ex in exs:
      ex.index = i
      if ev.get("blind", False):
        ex.parts = [blank(p) for p in ex.parts]
    out.append(exs)
  if skipped:
    logging.warning("evaluator on %s/%s: skipped %d unusable records (data counters: %s)",
                    ev.source, split, skipped,
                    ", ".join(f"{k}={v}" for k, v in sorted(counts.items()) if v))
  if not out:
    logging.warning("evaluator on %s/%s: no usable examples (num=%d); its metrics are NaN",
                    ev.source, split, num)
  return out, skipped


def load_examples(env: Env, ev, split: str, num: int, seed: int) -> Tuple[List[Example], int]:
  """The first `num` usable records of `ev.source`/`split` as Examples of
  its format (`load_records`); returns (examples, skipped)."""
  def make(i, fields, counts):
    ex = make_example(format_of(ev), fields, env, ev, counts)  # a registry lookup
    return None if ex is None else [ex]
  per_record, skipped = load_records(env, ev, split, num, seed, make)
  return [exs[0] for exs in per_record], skipped


def shots_of(ev, what: str) -> List[int]:
  """The evaluator's `shots`, sorted and distinct; an error naming `what` unless
  non-negative integers."""
  shots = sorted({int(k) for k in ev.shots})
  if not shots or shots[0] < 0:
    raise ValueError(f"evals {what}: shots={list(ev.shots)} must be non-negative integers")
  return shots


def train_majority(env: Env, ev) -> Tuple[Optional[str], int]:
  """The most frequent label text among the first train examples (a
  prediction-free baseline; None without any); returns (label, examples looked at)."""
  train, _ = load_examples(env, ev, "train", int(ev.num_baseline_examples), ev.seed + 1)
  counts = collections.Counter(ex.label for ex in train)
  return (counts.most_common(1)[0][0] if train else None), len(train)
