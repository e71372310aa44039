"""Per-example work of the pipeline: decode, tokenise and lay out one record.

Tasks (registry `TASKS`, picked by the source): `caption`, `vqa` and `nli`
turn one record into one finished row; `text` turns a document into
tokenised sentences that `packing.PackDocuments` packs into rows.

Every output carries `stats`, a dict of int counters (`STAT_KEYS`) for what
happened to its record; a record that cannot be used has `ok=False` and is
dropped later, after its counts are passed on.

Row layouts (decoder tokens; [..] = docked span, * = trained targets):
    caption: <s> <image> [image] </image> [prefix]? caption* </s>*
    vqa:     <s> <image> [image] </image> question: Q answer: A* </s>*
    nli:     <s> [premise] question: H true, false or neither? answer: L* </s>*
    (the premise goes through the text encoder if the model has one, split
    over consecutive items of max_len tokens; else it is plain tokens)
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Dict, List, Optional

import numpy as np

from metalm_jax import batch as batch_lib
from metalm_jax.data import images as images_lib
from metalm_jax.data import records as records_lib
from metalm_jax.data import sources as sources_lib
from metalm_jax.data import spans as spans_lib
from metalm_jax.registry import Registry

TASKS = Registry("task")

STAT_KEYS = ("examples", "skipped_bad_image", "skipped_empty_text", "skipped_bad_label",
             "converted_image_mode", "resized_nonsquare_image", "truncated_text",
             "skipped_unreadable_record")

NLI_WORDS = ("true", "neither", "false")  # entailment, neutral, contradiction


def new_stats(**counts) -> Dict[str, np.ndarray]:
  out = {k: np.int64(0) for k in STAT_KEYS}
  for k, v in counts.items():
    out[k] = np.int64(out[k] + v)
  return out


@dataclasses.dataclass
class Context:
  """What the per-example functions need; picklable."""
  tokenizer: Any
  model_cfg: Any
  seq_len: int
  vision: str          # name of the image encoder ("" if none)
  text: str            # name of the text encoder used for spans ("" if none)
  prefix_max: int      # max text-prefix length sent to the text encoder (caption)
  span_min: int
  span_max: int
  span_ratio: float
  max_doc_tokens: int
  image_mean: tuple
  image_std: tuple
  read_threads: int = 2      # threads of the per-example map, per mixture entry
  prefetch_buffer: int = 32  # rows read ahead, per mixture entry


def _image(ctx: Context, image, stats) -> Optional[np.ndarray]:
  rgb, counts = images_lib.to_rgb(image)
  for k, v in counts.items():
    stats[k] += v
  if rgb is None:
    return None
  if rgb.shape[0] != rgb.shape[1]:
    stats["resized_nonsquare_image"] += 1
  size = ctx.model_cfg.encoders[ctx.vision].image_size
  return images_lib.preprocess_image(rgb, size, ctx.image_mean, ctx.image_std)


def _finish(ctx: Context, row: spans_lib.Row, pixels, stats) -> Dict[str, Any]:
  out = spans_lib.layout_arrays(row, ctx.model_cfg)
  imgs = {} if pixels is None else {(ctx.vision, 0): pixels}
  out["encoders"] = spans_lib.encoder_arrays(row, ctx.model_cfg, imgs, ctx.tokenizer.pad)
  stats["examples"] += 1
  return {"ok": True, "row": out, "stats": stats}


def _fail(stats, key) -> Dict[str, Any]:
  stats[key] += 1
  return {"ok": False, "stats": stats}


def _nli_fields(fields, stats):
  """(premise, hypothesis, None), or (None, None, failure) for a bad label or
  empty text (counted)."""
  if fields["label"] not in (0, 1, 2):
    return None, None, _fail(stats, "skipped_bad_label")
  premise, hyp = fields["premise"].strip(), fields["hypothesis"].strip()
  if not premise or not hyp:
    return None, None, _fail(stats, "skipped_empty_text")
  return premise, hyp, None


def _image_head(ctx: Context, row: spans_lib.Row) -> None:
  tok = ctx.tokenizer
  t = batch_lib.slot_length(ctx.model_cfg.encoders[ctx.vision])
  row.start_segment()
  row.add_tokens([tok.bos, tok.image_start], train=False)
  row.add_span(t, ctx.vision, 0)
  row.add_tokens([tok.image_end], train=False)


def _fit(ids: List[int], room: int, stats) -> List[int]:
  if len(ids) > room:
    stats["truncated_text"] += 1
    return ids[:room]
  return ids


@TASKS.register("caption")
def caption_task(ctx: Context, fields, rng, stats):
  if not ctx.vision:
    raise ValueError("task 'caption' needs an image encoder in config.model.encoders")
  caps = [c.strip() for c in fields["captions"] if c and c.strip()]
  if not caps:
    return _fail(stats, "skipped_empty_text")
  ids = ctx.tokenizer.encode(caps[int(rng.integers(len(caps)))])
  if not ids:
    return _fail(stats, "skipped_empty_text")
  pixels = _image(ctx, fields["image"], stats)
  if pixels is None:
    return {"ok": False, "stats": stats}
  row = spans_lib.Row(ctx.seq_len, ctx.tokenizer.pad)
  _image_head(ctx, row)
  ids = _fit(ids, row.room - 1, stats)
  k = 0
  if ctx.text and ctx.prefix_max > 0 and len(ids) > 1:
    k = int(rng.integers(0, min(ctx.prefix_max, len(ids) - 1) + 1))
  if k:
    row.add_span(k, ctx.text, 0, tokens=ids[:k])
  row.add_tokens(ids[k:] + [ctx.tokenizer.eod], train=True)
  return _finish(ctx, row, pixels, stats)


def majority_answer(answers: List[str]) -> str:
  """The most frequent answer (first seen wins ties)."""
  counts: Dict[str, int] = {}
  for a in answers:
    counts[a] = counts.get(a, 0) + 1
  return max(counts, key=lambda a: counts[a])


@TASKS.register("vqa")
def vqa_task(ctx: Context, fields, rng, stats):
  return _vqa_templated(ctx, fields, rng, stats, "question: {question} answer:")


@TASKS.register("nli")
def nli_task(ctx: Context, fields, rng, stats):
  premise, hyp, failed = _nli_fields(fields, stats)
  if failed:
    return failed
  tok = ctx.tokenizer
  row = spans_lib.Row(ctx.seq_len, tok.pad)
  row.start_segment()
  row.add_tokens([tok.bos], train=False)
  p = tok.encode(premise)
  tail = tok.encode(f"question: {hyp} true, false or neither? answer:")
  label = tok.encode(NLI_WORDS[fields["label"]]) + [tok.eod]
  if ctx.text:  # consecutive encoder items of up to max_len tokens each
    enc = ctx.model_cfg.encoders[ctx.text]
    enc_len = batch_lib.slot_length(enc)
    p = _fit(p, max(1, min(enc_len * enc.max_items, row.room - len(tail) - len(label))), stats)
    for item, i in enumerate(range(0, len(p), enc_len)):
      chunk = p[i:i + enc_len]
      row.add_span(len(chunk), ctx.text, item, tokens=chunk)
  else:
    p = _fit(p, max(1, row.room - len(tail) - len(label)), stats)
    row.add_tokens(p, train=False)
  row.add_tokens(_fit(tail, row.room - len(label), stats), train=False)
  row.add_tokens(label, train=True)
  return _finish(ctx, row, None, stats)


_PARAGRAPH = re.compile(r"\n\s*\n")
_SENTENCE = re.compile(r"(?<=[.!?])\s+")


def split_sentences(text: str) -> List[List[str]]:
  """Paragraphs (blank-line separated) of sentences (split after . ! ?)."""
  paras = []
  for p in _PARAGRAPH.split(text.strip()):
    sents = [s.strip() for s in _SENTENCE.split(" ".join(p.split())) if s.strip()]
    if sents:
      paras.append(sents)
  return paras


@TASKS.register("text")
def text_task(ctx: Context, fields, rng, stats):
  """A document -> {"sentences": [int32 ids]}: paragraph ends carry <eop>, the
  last sentence <eod>. Sentences longer than a row and documents over
  max_doc_tokens are truncated (counted)."""
  tok = ctx.tokenizer
  paras = split_sentences(fields["text"])
  if not paras:
    return _fail(stats, "skipped_empty_text")
  sents, total, cut = [], 0, False
  for pi, para in enumerate(paras):
    for si, s in enumerate(para):
      ids = tok.encode(s)
      if si == len(para) - 1:
        ids.append(tok.eod if pi == len(paras) - 1 else tok.eop)
      if len(ids) > ctx.seq_len - 1:  # a segment also holds <s>
        ids, cut = ids[:ctx.seq_len - 1], True
      if total + len(ids) > ctx.max_doc_tokens:
        cut = True
        break
      sents.append(np.asarray(ids, np.int32))
      total += len(ids)
    else:
      continue
    break
  if cut:
    stats["truncated_text"] += 1
  if not sents:
    return _fail(stats, "skipped_empty_text")
  stats["examples"] += 1
  return {"ok": True, "sentences": sents, "stats": stats}


class PrepareExample:
  """map_with_index transform: (index, tfds record) -> task output.

  Randomness comes from (seed, component, index), so it does not depend on
  worker count or on where an iterator was restored."""

  def __init__(self, ctx: Context, source_name: str, component: int, seed: int):
    self.ctx, self.source_name, self.component, self.seed = ctx, source_name, component, seed

  def __call__(self, index: int, record):
    src = sources_lib.SOURCES.get(self.source_name)
    rng = np.random.default_rng([self.seed, self.component, index])
    if records_lib.is_unreadable(record):  # data.skip_corrupt_records: counted, dropped
      out = _fail(new_stats(), "skipped_unreadable_record")
    else:
      out = TASKS.get(src.task)(self.ctx, src.extract(record, rng), rng, new_stats())
    out["index"] = index
    return out


# ---------------------------------------------------------------- finetuning
# Layouts for finetuning (configs/finetune_*.py); [..] = docked, * = trained.
#   caption_prompted: <s> <image> [image] </image> caption: C* </s>*
#   *_instruct:       the task's layout with a template drawn per row from
#                     INSTRUCTION_TEMPLATES (instruction tuning, several per task)
#   pair (NLVR2):     <s> <image> [left] </image> <image> [right] </image>
#                     statement: S true or false? answer: L* </s>*
#                     (each image on its own encoder item)

PAIR_WORDS = ("true", "false")
INSTRUCTION_TEMPLATES = {  # lower case: the embedded world's tokenizer has no capitals
    "caption": ("caption:", "summarize this image:", "describe the picture:"),
    "vqa": ("question: {question} answer:", "{question} answer briefly:",
            "look at the picture. {question}"),
    "nli": ("question: {hypothesis} true, false or neither? answer:",
            "does it follow that {hypothesis} true, false or neither:",
            "hypothesis: {hypothesis} true, false or neither?"),
}


def _template(task: str, rng, fixed: Optional[str] = None) -> str:
  options = INSTRUCTION_TEMPLATES[task]
  return fixed if fixed is not None else options[int(rng.integers(len(options)))]


def _prompted_caption(ctx: Context, fields, rng, stats, template: str):
  if not ctx.vision:
    raise ValueError("caption tasks need an image encoder in config.model.encoders")
  caps = [c.strip() for c in fields["captions"] if c and c.strip()]
  if not caps:
    return _fail(stats, "skipped_empty_text")
  pixels = _image(ctx, fields["image"], stats)
  if pixels is None:
    return {"ok": False, "stats": stats}
  tok = ctx.tokenizer
  row = spans_lib.Row(ctx.seq_len, tok.pad)
  _image_head(ctx, row)
  prompt = tok.encode(template)
  row.add_tokens(_fit(prompt, row.room - 2, stats), train=False)
  ids = tok.encode(caps[int(rng.integers(len(caps)))]) + [tok.eod]
  row.add_tokens(_fit(ids, row.room, stats), train=True)
  return _finish(ctx, row, pixels, stats)


@TASKS.register("caption_prompted")
def caption_prompted_task(ctx: Context, fields, rng, stats):
  return _prompted_caption(ctx, fields, rng, stats, "caption:")


@TASKS.register("caption_instruct")
def caption_instruct_task(ctx: Context, fields, rng, stats):
  return _prompted_caption(ctx, fields, rng, stats, _template("caption", rng))


@TASKS.register("vqa_instruct")
def vqa_instruct_task(ctx: Context, fields, rng, stats):
  return _vqa_templated(ctx, fields, rng, stats, _template("vqa", rng))


def _vqa_templated(ctx: Context, fields, rng, stats, template: str):
  if not ctx.vision:
    raise ValueError("task 'vqa' needs an image encoder in config.model.encoders")
  answers = [a.strip() for a in fields["answers"] if a and a.strip()]
  question = fields["question"].strip()
  if not question or not answers:
    return _fail(stats, "skipped_empty_text")
  pixels = _image(ctx, fields["image"], stats)
  if pixels is None:
    return {"ok": False, "stats": stats}
  tok = ctx.tokenizer
  row = spans_lib.Row(ctx.seq_len, tok.pad)
  _image_head(ctx, row)
  ans = tok.encode(majority_answer(answers)) + [tok.eod]
  q = _fit(tok.encode(template.format(question=question)), row.room - len(ans), stats)
  row.add_tokens(q, train=False)
  row.add_tokens(_fit(ans, row.room, stats), train=True)
  return _finish(ctx, row, pixels, stats)


@TASKS.register("nli_instruct")
def nli_instruct_task(ctx: Context, fields, rng, stats):
  template = _template("nli", rng)
  premise, hyp, failed = _nli_fields(fields, stats)
  if failed:
    return failed
  tok = ctx.tokenizer
  row = spans_lib.Row(ctx.seq_len, tok.pad)
  row.start_segment()
  row.add_tokens([tok.bos], train=False)
  tail = tok.encode(template.format(hypothesis=hyp))
  label = tok.encode(NLI_WORDS[fields["label"]]) + [tok.eod]
  p = tok.encode(premise)
  if ctx.text:
    enc = ctx.model_cfg.encoders[ctx.text]
    enc_len = batch_lib.slot_length(enc)
    p = _fit(p, max(1, min(enc_len * enc.max_items, row.room - len(tail) - len(label))), stats)
    for item, i in enumerate(range(0, len(p), enc_len)):
      chunk = p[i:i + enc_len]
      row.add_span(len(chunk), ctx.text, item, tokens=chunk)
  else:
    row.add_tokens(_fit(p, max(1, row.room - len(tail) - len(label)), stats), train=False)
  row.add_tokens(_fit(tail, row.room - len(label), stats), train=False)
  row.add_tokens(label, train=True)
  return _finish(ctx, row, None, stats)


@TASKS.register("pair")
def pair_task(ctx: Context, fields, rng, stats):
  """NLVR2-style: two images, each docked on its own item, then a statement."""
  if not ctx.vision:
    raise ValueError("task 'pair' needs an image encoder in config.model.encoders")
  enc = ctx.model_cfg.encoders[ctx.vision]
  if enc.max_items < 2:
    raise ValueError(f"task 'pair' needs config.model.encoders.{ctx.vision}.max_items >= 2, "
                     f"got {enc.max_items}")
  if fields["label"] not in (0, 1):
    return _fail(stats, "skipped_bad_label")
  sentence = fields["sentence"].strip()
  if not sentence:
    return _fail(stats, "skipped_empty_text")
  pix = [_image(ctx, fields[k], stats) for k in ("image_left", "image_right")]
  if any(p is None for p in pix):
    return {"ok": False, "stats": stats}
  tok = ctx.tokenizer
  t = batch_lib.slot_length(enc)
  row = spans_lib.Row(ctx.seq_len, tok.pad)
  row.start_segment()
  row.add_tokens([tok.bos], train=False)
  for item in (0, 1):
    row.add_tokens([tok.image_start], train=False)
    row.add_span(t, ctx.vision, item)
    row.add_tokens([tok.image_end], train=False)
  label = tok.encode(PAIR_WORDS[fields["label"]]) + [tok.eod]
  q = _fit(tok.encode(f"statement: {sentence} true or false? answer:"), row.room - len(label),
           stats)
  row.add_tokens(q, train=False)
  row.add_tokens(_fit(label, row.room, stats), train=True)
  out = spans_lib.layout_arrays(row, ctx.model_cfg)
  out["encoders"] = spans_lib.encoder_arrays(
      row, ctx.model_cfg, {(ctx.vision, 0): pix[0], (ctx.vision, 1): pix[1]}, tok.pad)
  stats["examples"] += 1
  return {"ok": True, "row": out, "stats": stats}


@TASKS.register("nli_encoded")
def nli_encoded_task(ctx: Context, fields, rng, stats):
  """<s> [premise question: H] true, false or neither? answer: L* </s>*
  Premise and hypothesis go through one text-encoder item together (the
  bidirectional encoder compares them; used with a frozen decoder)."""
  if not ctx.text:
    raise ValueError("task 'nli_encoded' needs config.data.spans.encoder (a text encoder)")
  premise, hyp, failed = _nli_fields(fields, stats)
  if failed:
    return failed
  tok = ctx.tokenizer
  row = spans_lib.Row(ctx.seq_len, tok.pad)
  row.start_segment()
  row.add_tokens([tok.bos], train=False)
  tail = tok.encode(NLI_ENCODED_TAIL)
  label = tok.encode(NLI_WORDS[fields["label"]]) + [tok.eod]
  enc_len = batch_lib.slot_length(ctx.model_cfg.encoders[ctx.text])
  ids = _fit(tok.encode(f"{premise} question: {hyp}"),
             max(1, min(enc_len, row.room - len(tail) - len(label))), stats)
  row.add_span(len(ids), ctx.text, 0, tokens=ids)
  row.add_tokens(_fit(tail, row.room - len(label), stats), train=False)
  row.add_tokens(label, train=True)
  return _finish(ctx, row, None, stats)


NLI_ENCODED_TAIL = "true, false or neither? answer:"
