"""Evaluators: declared in `config.evals`, built through the registry
EVALUATORS, run by the trainer every `every_steps` and by eval-only runs
(`total_steps=0` with `init_from`).

    config.evals.vqa = dict(type="vqa", every_steps=500, source="world_vqa",
                            split="validation", num_examples=64)

Types (other fields and their defaults: DEFAULTS and `defaults(type)`):
  vqa       image, "question: Q answer:", generated answer; VQAv2 accuracy.
  caption   image, `prompt` ("Summarize this image:" zero-shot, "caption:"
            after finetuning), generated caption; BLEU-4, CIDEr (pycocoevalcap),
            METEOR / SPICE when `meteor` is None (auto: Java present) or True.
  classify  label word generated and label words ranked by log-likelihood
            (NLI and NLVR2-style pairs); accuracy both ways, chance, majority.
  icl       for k in `shots`: k demonstrations from the train split (each
            input through the encoders on its own items, its label as plain
            tokens), then the query; VQA / caption generate, NLI ranks labels.
            The encoders' `max_items` are raised to what k + 1 examples need on
            a copy of the model config (params do not depend on max_items).
  loss      token-weighted loss and perplexity over the pipeline rows of a split.

What the examples look like comes from FORMATS, keyed by the source's task
(`sources.SOURCES[source].task`, or the evaluator's `format` field).

Multi-host: evaluators run under the trainer's mesh with its param shardings
(`placement.Placement`; params are never gathered). Every process reads the
same examples; each global batch (`batch_size` rounded up to a multiple of
the batch shards, the last one padded) is split over the mesh's batch axes, so
each process runs only its rows; generated ids and per-row scores / loss sums
are gathered to every process, which computes the same metrics. An evaluation
over no examples / tokens reports NaN and logs a warning.

Outputs, in <workdir>/evals/ (process 0 only; a workdir may be gs://):
  step_<step>.json          {name: {metric: value}} for the evaluators run
  step_<step>.md            the same as a markdown table
  <name>_step_<step>.jsonl  one line per example: prompt, prediction, references
`run_evals` returns {"<name>/<metric>": value} for the trainer's logs.
"""
from __future__ import annotations

import collections
import dataclasses
import json
import logging
import math
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath

from metalm_jax import batch as batch_lib
from metalm_jax.evaluate import decode as decode_lib
from metalm_jax.evaluate import metrics as metrics_lib
from metalm_jax.evaluate import placement as placement_lib
from metalm_jax.evaluate import prompts as P
from metalm_jax.evaluate import scoring
from metalm_jax.models import metalm
from metalm_jax.registry import Registry

EVALUATORS = Registry("evaluator")
FORMATS = Registry("evaluation format")

NLI_WORDS = ("true", "neither", "false")  # entailment, neutral, contradiction (as in training)
PAIR_WORDS = ("true", "false")
DEFAULTS = dict(source="", split="validation", num_examples=64, batch_size=16, seed=0,
                max_new_tokens=8, method="greedy", beam_size=4, length_penalty=0.0,
                prompt="", format="", num_baseline_examples=256, bucket=16)
_TYPE_DEFAULTS = {
    "vqa": dict(max_new_tokens=8),
    "caption": dict(max_new_tokens=32, prompt="Summarize this image:", meteor=None),
    "classify": dict(max_new_tokens=8),  # label words can be several pieces
    "icl": dict(shots=(0, 1, 4), demo_split="train", demo_pool=256, max_new_tokens=8),
    "loss": dict(num_batches=8, mixture=None),
}


def defaults(ev_type: str) -> Dict[str, Any]:
  if ev_type not in _TYPE_DEFAULTS:
    raise ValueError(f"evals.*.type={ev_type!r} is unknown; known: {sorted(_TYPE_DEFAULTS)}")
  return {**DEFAULTS, **_TYPE_DEFAULTS[ev_type]}


@dataclasses.dataclass
class Env:
  """What every evaluator gets."""
  config: Any
  model: Any
  params: Any
  tokenizer: Any
  step: int
  placement: Optional[placement_lib.Placement] = None  # default: the config's mesh

  def placed(self) -> placement_lib.Placement:
    if self.placement is None:
      self.placement = placement_lib.Placement.from_config(self.config, self.model)
    return self.placement


@dataclasses.dataclass
class Example:
  index: int
  parts: List[Any]            # the query prompt (prompts.Text / Image / EncodedText)
  label: str                  # the answer as plain text (ICL demonstrations, generation target)
  refs: List[str]             # references for the metric
  label_id: int = -1          # class index (classify / icl on classes)


# ------------------------------------------------------------------ formats

@dataclasses.dataclass(frozen=True)
class Format:
  """How a task's canonical fields (sources.py) become an evaluation example.
  make(fields, env, ev) -> Example or None (skipped, counted)."""
  make: Callable[..., Optional[Example]]
  choices: Tuple[str, ...] = ()   # label words, for classification


def _pixels(env: Env, image) -> Optional[np.ndarray]:
  from metalm_jax.data import images
  names = [n for n in sorted(env.model.cfg.encoders) if env.model.cfg.encoders[n].type == "vit"]
  if len(names) != 1:
    raise ValueError(f"image evaluation needs exactly one 'vit' encoder in config.model.encoders, "
                     f"found {names}")
  rgb, _ = images.to_rgb(image)
  if rgb is None:
    return None
  data = env.config.data
  return images.preprocess_image(rgb, env.model.cfg.encoders[names[0]].image_size,
                                 tuple(data.image_mean), tuple(data.image_std))


def _text_encoder(model_cfg) -> Optional[str]:
  names = [n for n in sorted(model_cfg.encoders) if model_cfg.encoders[n].type == "bert"]
  return names[0] if len(names) == 1 else None


def encoded_chunks(text: str, tokenizer, model_cfg, max_items: Optional[int] = None) -> List[Any]:
  """`text` as EncodedText parts of at most max_len tokens each, split at word
  boundaries, at most `max_items` of them (the rest is cut); plain Text when
  the model has no single text encoder."""
  name = _text_encoder(model_cfg)
  if name is None:
    return [P.Text(text)]
  limit = batch_lib.slot_length(model_cfg.encoders[name])
  chunks, cur = [], []
  for word in text.split():
    if cur and len(tokenizer.encode(" ".join(cur + [word]))) > limit:
      chunks.append(" ".join(cur))
      cur = []
    cur.append(word)
  if cur:
    chunks.append(" ".join(cur))
  if max_items is not None and len(chunks) > max_items:
    logging.info("encoded_chunks: text cut to %d encoder items: %r", max_items, text)
    chunks = chunks[:max_items]
  parts = []
  for c in chunks:
    ids = tokenizer.encode(c)
    if len(ids) > limit:  # one word longer than the encoder: keep it as plain tokens
      parts.append(P.Text(c))
    else:
      parts.append(P.EncodedText(c, encoder=name))
  return parts


def _vqa(fields, env, ev):
  from metalm_jax.data.tasks import majority_answer
  answers = [a.strip() for a in fields["answers"] if a and a.strip()]
  q = fields["question"].strip()
  pix = _pixels(env, fields["image"])
  if not answers or not q or pix is None:
    return None
  return Example(0, [P.Image(pix), P.Text(f"question: {q} answer:")], majority_answer(answers),
                 answers)


def _caption(fields, env, ev):
  caps = [c.strip() for c in fields["captions"] if c and c.strip()]
  pix = _pixels(env, fields["image"])
  if not caps or pix is None:
    return None
  parts = [P.Image(pix)] + ([P.Text(ev.prompt)] if ev.prompt else [])
  return Example(0, parts, caps[0], caps)


def _nli(fields, env, ev):
  if fields["label"] not in (0, 1, 2):
    return None
  premise, hyp = fields["premise"].strip(), fields["hypothesis"].strip()
  if not premise or not hyp:
    return None
  name = _text_encoder(env.model.cfg)
  cap = env.model.cfg.encoders[name].max_items if name else None
  parts = encoded_chunks(premise, env.tokenizer, env.model.cfg, cap)
  parts.append(P.Text(f"question: {hyp} true, false or neither? answer:"))
  word = NLI_WORDS[fields["label"]]
  return Example(0, parts, word, [word], fields["label"])


def _nli_encoded(fields, env, ev):
  """Premise and hypothesis in one text-encoder item (tasks.nli_encoded_task)."""
  from metalm_jax.data.tasks import NLI_ENCODED_TAIL
  if fields["label"] not in (0, 1, 2):
    return None
  premise, hyp = fields["premise"].strip(), fields["hypothesis"].strip()
  name = _text_encoder(env.model.cfg)
  if not premise or not hyp:
    return None
  if name is None:
    raise ValueError("format 'nli_encoded' needs exactly one 'bert' encoder in config.model.encoders")
  text = f"{premise} question: {hyp}"
  limit = batch_lib.slot_length(env.model.cfg.encoders[name])
  ids = env.tokenizer.encode(text)
  if len(ids) > limit:  # cut as the training rows are cut (counted there)
    text = env.tokenizer.decode(ids[:limit])
  word = NLI_WORDS[fields["label"]]
  return Example(0, [P.EncodedText(text, encoder=name), P.Text(NLI_ENCODED_TAIL)], word, [word],
                 fields["label"])


def _pair(fields, env, ev):
  """NLVR2-style: two images, each on its own encoder item, then the statement."""
  if fields["label"] not in (0, 1):
    return None
  pix = [_pixels(env, im) for im in (fields["image_left"], fields["image_right"])]
  sentence = fields["sentence"].strip()
  if any(p is None for p in pix) or not sentence:
    return None
  parts = [P.Image(pix[0]), P.Image(pix[1]),
           P.Text(f"statement: {sentence} true or false? answer:")]
  word = PAIR_WORDS[fields["label"]]
  return Example(0, parts, word, [word], fields["label"])


FORMATS.register("vqa")(Format(_vqa))
FORMATS.register("caption")(Format(_caption))
FORMATS.register("nli")(Format(_nli, NLI_WORDS))
FORMATS.register("nli_encoded")(Format(_nli_encoded, NLI_WORDS))
FORMATS.register("pair")(Format(_pair, PAIR_WORDS))


def format_of(ev) -> str:
  if ev.format:
    return ev.format
  from metalm_jax.data import sources
  task = sources.SOURCES.get(ev.source).task
  return task if task in FORMATS else task.split("_")[0]  # vqa_instruct -> vqa


def load_examples(env: Env, ev, split: str, num: int, seed: int) -> Tuple[List[Example], int]:
  """The first `num` usable records of `ev.source`/`split` as Examples (in
  record order; field extraction seeded per record); returns (examples, skipped)."""
  from metalm_jax.data import pipeline, sources
  if not ev.source:
    raise ValueError("evals.*.source is empty; name a data source (metalm_jax/data/sources.py)")
  fmt = FORMATS.get(format_of(ev))
  src = sources.SOURCES.get(ev.source)
  records = pipeline.data_source(env.config.data, ev.source, split)
  out, skipped = [], 0
  for i in range(len(records)):
    if len(out) >= num:
      break
    fields = src.extract(records[i], np.random.default_rng([seed, i]))
    ex = fmt.make(fields, env, ev)
    if ex is None:
      skipped += 1
      continue
    ex.index = i
    out.append(ex)
  if skipped:
    logging.warning("evaluator on %s/%s: skipped %d unusable records", ev.source, split, skipped)
  if not out:
    logging.warning("evaluator on %s/%s: no usable examples (num=%d); its metrics are NaN",
                    ev.source, split, num)
  return out, skipped


def mean(values: Sequence[float], what: str) -> float:
  """Mean of `values`; NaN and a warning when there are none (never a perfect score)."""
  if not len(values):
    logging.warning("%s over no examples: NaN", what)
    return float("nan")
  return float(np.mean(values))


# ------------------------------------------------------------ model running

def _bucket(n: int, size: int) -> int:
  return -(-n // size) * size


def _chunks(items: Sequence[Any], size: int):
  for i in range(0, len(items), size):
    chunk = list(items[i:i + size])
    yield chunk, len(chunk)


def prompt_seq_len(env: Env, model, prompts: List[List[Any]], bucket: int, room: int) -> int:
  """Width of a left-padded batch of `prompts` (the whole global batch, so
  every process agrees): the longest rounded up to a multiple of `bucket`
  (fewer compiles), leaving `room` positions for generated / scored tokens."""
  length = max(P.prompt_lengths(prompts, env.tokenizer, model.cfg))
  limit = model.cfg.decoder.max_len - room
  if length > limit:
    raise ValueError(f"a prompt has {length} tokens; with {room} new tokens it exceeds "
                     f"model.decoder.max_len={model.cfg.decoder.max_len}")
  return min(_bucket(length, bucket), limit)


def generate_texts(env: Env, model, params, prompts: List[List[Any]], ev) -> List[str]:
  """Decoded continuation (up to eos) of every prompt, in order."""
  tok, pl = env.tokenizer, env.placed()
  params = pl.put_params(params)
  new = int(ev.max_new_tokens)
  kw = dict(max_new_tokens=new, eos_id=tok.eos, pad_id=tok.pad, placement=pl)
  if ev.method == "beam":
    kw.update(beam_size=int(ev.beam_size), length_penalty=float(ev.length_penalty))
  elif ev.method != "greedy":
    raise ValueError(f"evals.*.method={ev.method!r}: evaluators decode with 'greedy' or 'beam'")

  def build(chunk, local):
    return P.build_batch(local, tok, model.cfg,
                         seq_len=prompt_seq_len(env, model, chunk, int(ev.bucket), new))

  def run(batch):
    res = decode_lib.generate(model, params, batch, ev.method, **kw)
    return res.ids, res.lengths

  out = placement_lib.map_rows(pl, prompts, int(ev.batch_size), build, run)
  if out is None:
    return []
  ids, lengths = out
  return [tok.decode(ids[b, :lengths[b]]).strip() for b in range(len(prompts))]


def rank_choices(env: Env, model, params, prompts: List[List[Any]], choices: Sequence[str],
                 ev) -> Tuple[np.ndarray, np.ndarray]:
  """(index of the most likely choice [N], summed log-probs [N, C]); each
  choice is scored as its tokens followed by eos."""
  tok, pl = env.tokenizer, env.placed()
  params = pl.put_params(params)
  cand = [list(tok.encode(c)) + [tok.eos] for c in choices]
  width = max(len(c) for c in cand)

  def build(chunk, local):
    batch = P.build_batch(local, tok, model.cfg,
                          seq_len=prompt_seq_len(env, model, chunk, int(ev.bucket), width))
    return scoring.append_candidates(batch, [cand] * len(local), tok.pad, width)

  def run(batch):
    return scoring.sequence_logprobs(model, params, batch, placement=pl).sum

  out = placement_lib.map_rows(pl, prompts, int(ev.batch_size), build, run,
                               rows_per_item=len(cand))
  scores = (np.zeros((0, len(cand)), np.float32) if out is None
            else out.reshape(len(prompts), len(cand)))
  return scores.argmax(-1), scores


def clean_label(text: str) -> str:
  return text.strip().strip(".!?,;:").strip().lower()


# ---------------------------------------------------------------- evaluators

def _prompt_text(parts) -> str:
  out = []
  for p in parts:
    if isinstance(p, P.Image):
      out.append("<image>")
    elif isinstance(p, P.EncodedText):
      out.append(f"[{p.text}]")
    else:
      out.append(p.text)
  return " ".join(out)


def _records(examples, preds, **extra) -> List[Dict[str, Any]]:
  rows = []
  for i, (ex, pred) in enumerate(zip(examples, preds)):
    row = {"index": ex.index, "prompt": _prompt_text(ex.parts), "prediction": pred,
           "references": ex.refs}
    for k, v in extra.items():
      row[k] = v[i]
    rows.append(row)
  return rows


def _train_majority(env: Env, ev) -> Tuple[Optional[str], int]:
  """The most frequent label text among the first train examples (a
  prediction-free baseline; None without any); returns (label, examples looked at)."""
  train, _ = load_examples(env, ev, "train", int(ev.num_baseline_examples), ev.seed + 1)
  counts = collections.Counter(ex.label for ex in train)
  return (counts.most_common(1)[0][0] if train else None), len(train)


@EVALUATORS.register("vqa")
def eval_vqa(env: Env, ev):
  examples, skipped = load_examples(env, ev, ev.split, int(ev.num_examples), ev.seed)
  preds = generate_texts(env, env.model, env.params, [e.parts for e in examples], ev)
  acc = [metrics_lib.vqa_accuracy(p, e.refs) for p, e in zip(preds, examples)]
  out = {"accuracy": mean(acc, "vqa accuracy"), "examples": len(examples), "skipped": skipped}
  if ev.num_baseline_examples:
    answer, _ = _train_majority(env, ev)
    out["majority_answer_accuracy"] = mean(
        [metrics_lib.vqa_accuracy(answer, e.refs) for e in examples if answer is not None],
        "vqa majority-answer baseline")
  return out, _records(examples, preds, accuracy=acc)


@EVALUATORS.register("caption")
def eval_caption(env: Env, ev):
  examples, skipped = load_examples(env, ev, ev.split, int(ev.num_examples), ev.seed)
  preds = generate_texts(env, env.model, env.params, [e.parts for e in examples], ev)
  refs = {str(e.index): e.refs for e in examples}
  scores = _caption_scores({str(e.index): p or "." for e, p in zip(examples, preds)}, refs,
                           ev.meteor, ("BLEU-4", "CIDEr", "METEOR", "SPICE"))
  out = dict(scores, examples=len(examples), skipped=skipped)
  if ev.num_baseline_examples:
    fixed, _ = _train_majority(env, ev)
    base = _caption_scores({str(e.index): fixed for e in examples if fixed is not None}, refs,
                           False, ("BLEU-4", "CIDEr"))
    out["fixed_caption_BLEU-4"] = base["BLEU-4"]
    out["fixed_caption_CIDEr"] = base["CIDEr"]
  return out, _records(examples, preds)


def _caption_scores(preds: Dict[str, str], refs: Dict[str, List[str]], meteor,
                    keys: Sequence[str]) -> Dict[str, float]:
  """pycocoevalcap scores `keys` (those it computed); NaN and a warning with no captions."""
  if not preds:
    logging.warning("caption metrics over no examples: NaN")
    return {k: float("nan") for k in keys if k in ("BLEU-4", "CIDEr")}
  scores = metrics_lib.caption_metrics(preds, {k: refs[k] for k in preds}, meteor=meteor,
                                       spice=meteor)
  return {k: v for k, v in scores.items() if k in keys}


def _classify_metrics(env, model, params, examples, prompts, choices, ev, suffix=""):
  labels = np.array([e.label_id for e in examples])
  gen = generate_texts(env, model, params, prompts, ev)
  gen_ok = np.array([clean_label(g) == choices[y] for g, y in zip(gen, labels)])
  ranked, scores = rank_choices(env, model, params, prompts, choices, ev)
  out = {f"accuracy_generate{suffix}": mean(gen_ok, "classify accuracy (generated)"),
         f"accuracy_rank{suffix}": mean(ranked == labels, "classify accuracy (ranked)")}
  return out, gen, ranked, gen_ok


@EVALUATORS.register("classify")
def eval_classify(env: Env, ev):
  fmt = FORMATS.get(format_of(ev))
  if not fmt.choices:
    raise ValueError(f"evals classify: format {format_of(ev)!r} has no label words")
  examples, skipped = load_examples(env, ev, ev.split, int(ev.num_examples), ev.seed)
  out, gen, ranked, gen_ok = _classify_metrics(env, env.model, env.params, examples,
                                               [e.parts for e in examples], fmt.choices, ev)
  labels = [e.label_id for e in examples]
  top = collections.Counter(labels).most_common(1)
  out.update(chance=1.0 / len(fmt.choices),
             majority_class=mean([int(y == top[0][0]) for y in labels] if top else [],
                                 "classify majority class"),
             examples=len(examples), skipped=skipped)
  return out, _records(examples, gen, ranked=[fmt.choices[i] for i in ranked],
                       generated_correct=[bool(x) for x in gen_ok])


# ---------------------------------------------------------------------- icl

def items_needed(parts: Sequence[Any], model_cfg) -> Dict[str, int]:
  """Encoder items a prompt uses, per encoder name."""
  need: Dict[str, int] = {}
  for p in parts:
    if isinstance(p, P.Image):
      t = "vit"
    elif isinstance(p, P.EncodedText):
      t = "bert"
    else:
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


def demonstrations(pool: Sequence[Example], num_queries: int, k_max: int,
                   seed: int) -> List[List[Example]]:
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


@EVALUATORS.register("icl")
def eval_icl(env: Env, ev):
  fmt_name = format_of(ev)
  fmt = FORMATS.get(fmt_name)
  shots = sorted({int(k) for k in ev.shots})
  if not shots or shots[0] < 0:
    raise ValueError(f"evals icl: shots={list(ev.shots)} must be non-negative integers")
  examples, skipped = load_examples(env, ev, ev.split, int(ev.num_examples), ev.seed)
  pool, _ = load_examples(env, ev, ev.demo_split, int(ev.demo_pool), ev.seed + 1)
  demos = demonstrations(pool, len(examples), shots[-1], ev.seed + 2)
  out: Dict[str, float] = {"examples": len(examples), "skipped": skipped}
  rows: List[Dict[str, Any]] = [{"index": e.index, "references": e.refs} for e in examples]
  for k in shots:
    prompts = [P.icl_parts([(d.parts, d.label) for d in ds[:k]], e.parts)
               for ds, e in zip(demos, examples)]
    need: Dict[str, int] = {}
    for p in prompts:
      for n, c in items_needed(p, env.model.cfg).items():
        need[n] = max(need.get(n, 0), c)
    model = with_max_items(env.model, need)
    if fmt.choices:
      labels = np.array([e.label_id for e in examples])
      ranked, _ = rank_choices(env, model, env.params, prompts, fmt.choices, ev)
      out[f"k{k}/accuracy"] = mean(ranked == labels, f"icl k={k} accuracy")
      preds = [fmt.choices[i] for i in ranked]
    else:
      preds = generate_texts(env, model, env.params, prompts, ev)
      if fmt_name == "vqa":
        out[f"k{k}/accuracy"] = mean(
            [metrics_lib.vqa_accuracy(p, e.refs) for p, e in zip(preds, examples)],
            f"icl k={k} accuracy")
      else:
        s = _caption_scores({str(e.index): p or "." for e, p in zip(examples, preds)},
                            {str(e.index): e.refs for e in examples}, False, ("BLEU-4", "CIDEr"))
        out[f"k{k}/CIDEr"], out[f"k{k}/BLEU-4"] = s["CIDEr"], s["BLEU-4"]
    for row, pr, p in zip(rows, prompts, preds):
      row[f"k{k}"] = {"prompt": _prompt_text(pr), "prediction": p}
  return out, rows


# --------------------------------------------------------------------- loss

def _row_loss(params, batch, *, model):
  """Per row: summed token cross-entropy over loss_mask and the token count."""
  logits = model.apply({"params": params}, batch)
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), -1)
  nll = -jnp.take_along_axis(logp, batch["targets"][..., None], -1)[..., 0]
  mask = batch["loss_mask"].astype(jnp.float32)
  return (nll * mask).sum(-1), mask.sum(-1)


@EVALUATORS.register("loss")
def eval_loss(env: Env, ev):
  """Every process reads the same pipeline batches and runs its rows of each;
  per-row sums are gathered and added in float64 (independent of the mesh)."""
  from metalm_jax.data import pipeline
  config = ml_collections.ConfigDict(env.config.to_dict())
  if ev.mixture:
    config.data.mixture = dict(ev.mixture)
  size = int(ev.batch_size)
  it = pipeline.make_iterator(config, ev.split, batch_size=size, shuffle=False, num_epochs=1,
                              seed=int(ev.seed))
  pl = env.placed()
  params = pl.put_params(env.params)
  fn = pl.jit(_row_loss, model=env.model)
  total, count, batches = 0.0, 0.0, 0
  for _ in range(int(ev.num_batches)):
    try:
      batch, _ = pipeline.split_stats(next(it))
    except StopIteration:
      break
    take = lambda chunk, local, batch=batch: jax.tree.map(lambda x: np.asarray(x)[local], batch)
    s, n = placement_lib.map_rows(pl, list(range(size)), size, take,
                                  lambda g: pl.call(fn, params, g))
    total += float(np.sum(s, dtype=np.float64))
    count += float(np.sum(n, dtype=np.float64))
    batches += 1
  if count:
    loss = total / count
    perplexity = math.exp(min(loss, 80.0))
  else:
    logging.warning("evals loss: split %r gave no trained tokens (%d batches); loss is NaN",
                    ev.split, batches)
    loss = perplexity = float("nan")
  return {"loss": loss, "perplexity": perplexity, "tokens": count, "batches": batches}, []


# ------------------------------------------------------------------ running

def resolve(ev) -> ml_collections.ConfigDict:
  """An evaluator config with its type's defaults filled in; unknown fields
  are errors (they would be silently ignored otherwise)."""
  ev = ev.to_dict() if hasattr(ev, "to_dict") else dict(ev)
  if "type" not in ev:
    raise ValueError("evals.<name>.type is missing")
  full = defaults(ev["type"])
  unknown = set(ev) - set(full) - {"type", "every_steps"}
  if unknown:
    raise ValueError(f"evals.<name> of type {ev['type']!r} has unknown fields {sorted(unknown)}; "
                     f"known: {sorted(full)}")
  full.update(ev)
  return ml_collections.ConfigDict(full)


def markdown_table(results: Dict[str, Dict[str, float]]) -> str:
  lines = ["| evaluator | metric | value |", "|---|---|---|"]
  for name in sorted(results):
    for k in sorted(results[name]):
      v = results[name][k]
      lines.append(f"| {name} | {k} | {v:.4f} |" if isinstance(v, float) else
                   f"| {name} | {k} | {v} |")
  return "\n".join(lines) + "\n"


def write_results(workdir, step: int, results, predictions) -> epath.Path:
  """Writes step_<step>.json / .md and <name>_step_<step>.jsonl (each file in
  one write: a workdir may be an object store); returns the dir."""
  out = epath.Path(workdir) / "evals"
  out.mkdir(parents=True, exist_ok=True)
  (out / f"step_{step}.json").write_text(
      json.dumps({"step": step, "results": results}, indent=2, sort_keys=True))
  (out / f"step_{step}.md").write_text(f"## Evaluation at step {step}\n\n"
                                       + markdown_table(results))
  for name, rows in predictions.items():
    if rows:
      (out / f"{name}_step_{step}.jsonl").write_text(
          "".join(json.dumps(row, default=float) + "\n" for row in rows))
  return out


def run_evals(config, model, params, step: int, workdir, names: Optional[Sequence[str]] = None,
              placement: Optional[placement_lib.Placement] = None) -> Dict[str, float]:
  """Runs the evaluators of `config.evals` due at `step` (step divisible by
  their every_steps; all of them at step 0), or those in `names`; writes
  their results and predictions (process 0); returns {"<name>/<metric>": value}
  on every process. `placement`: the trainer's mesh, rules and param
  shardings (default: the config's mesh over all devices). Every process calls it."""
  from metalm_jax.data import prepare
  evals = dict(config.get("evals") or {})
  if names is None:
    names = [n for n in sorted(evals) if step % max(int(evals[n].get("every_steps", 1)), 1) == 0]
  missing = [n for n in names if n not in evals]
  if missing:
    raise ValueError(f"evals {missing} are not in config.evals ({sorted(evals)})")
  if not names:
    return {}
  placement = placement or placement_lib.Placement.from_config(config, model)
  env = Env(config, model, placement.put_params(nn.meta.unbox(params)),
            prepare.load_tokenizer(config), step, placement)
  results, predictions = {}, {}
  for name in names:
    ev = resolve(evals[name])
    logging.info("evaluator %s (%s) at step %d", name, ev.type, step)
    res, rows = EVALUATORS.get(ev.type)(env, ev)
    results[name] = {k: float(v) for k, v in res.items()}
    predictions[name] = rows
  if jax.process_index() == 0:
    write_results(workdir, step, results, predictions)
  return {f"{n}/{k}": v for n, r in results.items() for k, v in r.items()}
