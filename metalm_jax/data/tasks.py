"""Per-example work of the pipeline: decode, tokenise and lay out one record.

Tasks (registry `TASKS`, picked by the source's `task`):
  (images, sound clips and videos are docked as the format says, models/modalities/
  decodes them; brackets `<image>`/`<audio>`/`<video>` ... around each)
  caption   pretraining: <s> <image> [image] </image> [prefix]? caption* </s>*
            (a random caption prefix may go through the text encoder);
  text      a document -> tokenised sentences that `packing.PackDocuments`
            packs into rows;
  interleaved  pretraining: an interleaved document laid out as an
            in-context prompt (formats.py): <s>, then per image the tokens of
            an ICL demonstration of one format drawn per row (vqa or caption):
            <image> [image k] </image> prompt answer* </s>*;
  episode_image, episode_text   a binding episode laid out as an
            in-context prompt of its items (formats.EPISODE_ITEM_FORMATS):
            <s>, then per item its picture or encoded phrase, `this is a`,
            its name* </s>*;
  every other task (vqa, nli, pair, text_qa, bind_*, audio_*, video_* and
            the finetuning variants *_prompted, *_instruct, nli_encoded) is
            `supervised_task` over its format in formats.py, which defines
            the row: images, sound clips, videos, encoded text, prompt,
            answer and `</s>`.

Every output carries `stats`, a dict of int counters (`STAT_KEYS`) for what
happened to its record; a record that cannot be used has `ok=False` and is
dropped later, after its counts are passed on.
"""
from __future__ import annotations

import dataclasses
import functools
import re
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from metalm_jax import batch as batch_lib
from metalm_jax.data import formats as formats_lib
from metalm_jax.data import records as records_lib
from metalm_jax.data import sources as sources_lib
from metalm_jax.data import spans as spans_lib
from metalm_jax.models import modalities
from metalm_jax.registry import Registry

TASKS = Registry("task")

# Every data/* counter, one name per event (the decoders' own names:
# images.to_rgb, audio.STAT_KEYS, video.STAT_KEYS).
STAT_KEYS = (
    "examples", "skipped_empty_text", "skipped_bad_label", "truncated_text",
    "skipped_unreadable_record",
    # images (and pictures of a video stored as pictures)
    "skipped_bad_image", "converted_image_mode", "resized_nonsquare_image",
    # sound clips (media/audio.py)
    "skipped_bad_audio", "skipped_silent_audio", "converted_audio_channels",
    "resampled_audio", "truncated_audio",
    # videos (media/video.py)
    "skipped_bad_video", "skipped_empty_video", "converted_variable_frame_rate",
    "repeated_video_frames", "resized_nonsquare_video")


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
  audio: str = ""            # name of the audio ("whisper") encoder ("" if none)
  video: str = ""            # name of the video encoder ("" if none)
  episode_docked: float = 1.0  # chance an episode item's phrase is docked (data.spans)
  caption_contexts: tuple = ()  # texts drawn between image and caption (data)

  def encoder_for(self, kind: str) -> str:
    """The encoder docking media `kind` (models/modalities/), "" if none."""
    return {"image": self.vision, "audio": self.audio, "video": self.video}[kind]


def _load(ctx: Context, kind: str, value, stats) -> Optional[np.ndarray]:
  """One docked input of media `kind` as its encoder takes it (None: unusable, counted)."""
  name = ctx.encoder_for(kind)
  return modalities.MODALITIES.get(kind).load(value, ctx.model_cfg.encoders[name],
                                        (ctx.image_mean, ctx.image_std), stats)


def _image(ctx: Context, image, stats) -> Optional[np.ndarray]:
  return _load(ctx, "image", image, stats)


def _finish(ctx: Context, row: spans_lib.Row, items: List[Tuple[str, np.ndarray]],
            stats) -> Dict[str, Any]:
  """`items`: (media kind, encoder input) of the row's docked items, in order."""
  out = spans_lib.layout_arrays(row, ctx.model_cfg)
  arrays, count = {}, {}
  for kind, x in items:
    name = ctx.encoder_for(kind)
    arrays[(name, count.get(name, 0))] = x
    count[name] = count.get(name, 0) + 1
  out["encoders"] = spans_lib.encoder_arrays(row, ctx.model_cfg, arrays, ctx.tokenizer.pad)
  stats["examples"] += 1
  return {"ok": True, "row": out, "stats": stats}


def _fail(stats, key) -> Dict[str, Any]:
  stats[key] += 1
  return {"ok": False, "stats": stats}


def _fit(ids: List[int], room: int, stats) -> List[int]:
  room = max(room, 0)
  if len(ids) > room:
    stats["truncated_text"] += 1
    return ids[:room]
  return ids


def _check_encoders(ctx: Context, fmt: formats_lib.Format) -> None:
  need: Dict[str, int] = {}
  for kind, _ in fmt.media():
    need[kind] = need.get(kind, 0) + 1
  for kind, n in need.items():
    name = ctx.encoder_for(kind)
    if not name:
      enc_type = modalities.MODALITIES.get(kind).encoder_type
      raise ValueError(f"task {fmt.name!r} needs a {enc_type!r} "
                       f"({kind}) encoder in config.model.encoders")
    modalities.brackets(ctx.tokenizer, kind)
    enc = ctx.model_cfg.encoders[name]
    if enc.max_items < n:
      raise ValueError(f"task {fmt.name!r} needs config.model.encoders.{name}.max_items "
                       f">= {n}, got {enc.max_items}")
  if fmt.encoded_items == "one" and fmt.encoded and not ctx.text:
    raise ValueError(f"task {fmt.name!r} needs config.data.spans.encoder (a text encoder)")


def _add_media(ctx: Context, row: spans_lib.Row, kind: str, item: int) -> None:
  """A docked input of media `kind`: its opening bracket, its span on item
  `item` of its encoder, its closing bracket."""
  name = ctx.encoder_for(kind)
  start, end = modalities.brackets(ctx.tokenizer, kind)
  row.add_tokens([start], train=False)
  row.add_span(batch_lib.slot_length(ctx.model_cfg.encoders[name]), name, item)
  row.add_tokens([end], train=False)


def _media_head(ctx: Context, row: spans_lib.Row, kinds: List[str]) -> None:
  """<s>, then each docked input of `kinds` (in order) on the next item of
  its encoder."""
  row.start_segment()
  row.add_tokens([ctx.tokenizer.bos], train=False)
  count: Dict[str, int] = {}
  for kind in kinds:
    name = ctx.encoder_for(kind)
    _add_media(ctx, row, kind, count.get(name, 0))
    count[name] = count.get(name, 0) + 1


def _images_head(ctx: Context, row: spans_lib.Row, num: int) -> None:
  """<s>, then `num` times <image> [item] </image>."""
  _media_head(ctx, row, ["image"] * num)


def _add_encoded(ctx: Context, row: spans_lib.Row, ids: List[int], room: int, items: int,
                 stats, first: int = 0) -> int:
  """Encoder text on consecutive text-encoder items from item `first`, or
  plain tokens without one. Returns the number of items used."""
  if not ctx.text:
    row.add_tokens(_fit(ids, max(1, room), stats), train=False)
    return 0
  size = batch_lib.slot_length(ctx.model_cfg.encoders[ctx.text])
  ids = _fit(ids, max(1, min(size * items, room)), stats)
  pieces = formats_lib.chunks(ids, size)
  for k, chunk in enumerate(pieces):
    row.add_span(len(chunk), ctx.text, first + k, tokens=chunk)
  return len(pieces)


def supervised_task(fmt: formats_lib.Format, ctx: Context, fields, rng, stats):
  """One row of `fmt` (formats.py): inputs, prompt, then the trained answer and </s>."""
  _check_encoders(ctx, fmt)
  template = fmt.template(rng)
  parsed, skip = fmt.parse(fields)
  if parsed is None:
    return _fail(stats, skip)
  tok = ctx.tokenizer
  docked = [(kind, _load(ctx, kind, parsed.fields[k], stats)) for kind, k in fmt.media()]
  if any(x is None for _, x in docked):
    return {"ok": False, "stats": stats}
  answer = formats_lib.answer_ids(tok, fmt.target(parsed, rng))
  prompt = tok.encode(fmt.prompt(parsed, template)) if template else []
  row = spans_lib.Row(ctx.seq_len, tok.pad)
  _media_head(ctx, row, [kind for kind, _ in docked])
  if fmt.encoded:
    items = fmt.encoder_items(ctx.model_cfg.encoders[ctx.text]) if ctx.text else 0
    _add_encoded(ctx, row, tok.encode(fmt.encoder_text(parsed)),
                 row.room - len(prompt) - len(answer), items, stats)
  keep = len(answer) if fmt.answer_room is None else fmt.answer_room
  row.add_tokens(_fit(prompt, row.room - keep, stats), train=False)
  row.add_tokens(_fit(answer, row.room, stats), train=True)
  return _finish(ctx, row, docked, stats)


for _name in formats_lib.FORMATS:
  if _name != "caption":
    TASKS.register(_name)(functools.partial(supervised_task, formats_lib.FORMATS.get(_name)))


@TASKS.register("caption")
def caption_task(ctx: Context, fields, rng, stats):
  fmt = formats_lib.FORMATS.get("caption")
  _check_encoders(ctx, fmt)
  parsed, skip = fmt.parse(fields)
  if parsed is None:
    return _fail(stats, skip)
  ids = ctx.tokenizer.encode(fmt.target(parsed, rng))
  if not ids:
    return _fail(stats, "skipped_empty_text")
  pixels = _image(ctx, parsed.fields["image"], stats)
  if pixels is None:
    return {"ok": False, "stats": stats}
  row = spans_lib.Row(ctx.seq_len, ctx.tokenizer.pad)
  _images_head(ctx, row, 1)
  if ctx.caption_contexts:
    context = ctx.caption_contexts[int(rng.integers(len(ctx.caption_contexts)))]
    if context:
      row.add_tokens(_fit(ctx.tokenizer.encode(context), row.room - 2, stats), train=False)
  ids = _fit(ids, row.room - 1, stats)
  k = 0
  if ctx.text and ctx.prefix_max > 0 and len(ids) > 1:
    k = int(rng.integers(0, min(ctx.prefix_max, len(ids) - 1) + 1))
  if k:
    row.add_span(k, ctx.text, 0, tokens=ids[:k])
  row.add_tokens(ids[k:] + [formats_lib.answer_end_id(ctx.tokenizer)], train=True)
  return _finish(ctx, row, [("image", pixels)], stats)


# The formats an interleaved document's items follow (one per row, drawn).
INTERLEAVED_FORMATS = ("vqa", "caption")


@TASKS.register("interleaved")
def interleaved_task(ctx: Context, fields, rng, stats):
  """`fields["items"]`: per image {image, captions, question, answers}. Each
  item is laid out exactly as an in-context demonstration of the drawn
  format (evaluate/prompts.py `icl_parts`): its image on the next item of the
  vision encoder, its evaluation prompt (`Format.eval_template`), its answer
  (trained) and `</s>`. Items follow while the vision encoder's max_items and
  the row hold them whole; a first item too long is cut like any row
  (counted), unusable items are skipped (counted)."""
  fmt = formats_lib.FORMATS.get(INTERLEAVED_FORMATS[int(rng.integers(len(INTERLEAVED_FORMATS)))])
  _check_encoders(ctx, fmt)
  tok = ctx.tokenizer
  cap = ctx.model_cfg.encoders[ctx.vision].max_items
  t = batch_lib.slot_length(ctx.model_cfg.encoders[ctx.vision])
  row = spans_lib.Row(ctx.seq_len, tok.pad)
  row.start_segment()
  row.add_tokens([tok.bos], train=False)
  pixels: List[np.ndarray] = []
  for item in fields["items"]:
    if len(pixels) >= cap:
      break
    parsed, skip = fmt.parse(item)
    if parsed is None:
      stats[skip] += 1
      continue
    prompt = tok.encode(fmt.prompt(parsed, fmt.eval_template()))
    answer = formats_lib.answer_ids(tok, fmt.target(parsed, rng))
    if pixels and t + 2 + len(prompt) + len(answer) > row.room:
      break
    p = _image(ctx, parsed.fields["image"], stats)
    if p is None:
      continue
    row.add_tokens([tok.image_start], train=False)
    row.add_span(t, ctx.vision, len(pixels))
    row.add_tokens([tok.image_end], train=False)
    row.add_tokens(_fit(prompt, row.room - len(answer), stats), train=False)
    row.add_tokens(_fit(answer, row.room, stats), train=True)
    pixels.append(p)
  if not pixels:
    return {"ok": False, "stats": stats}
  return _finish(ctx, row, [("image", p) for p in pixels], stats)


def episode_task(fmt: formats_lib.Format, ctx: Context, fields, rng, stats):
  """`fields["items"]`: a binding episode's items ({image, text, label}:
  demonstrations, then the query), laid out exactly as an in-context prompt
  of `fmt` (evaluate/prompts.py `icl_parts`): <s>, then per item its inputs
  (its picture on the next vision-encoder item; its encoded phrase on the
  next text-encoder items, plain tokens without a text encoder), its
  evaluation prompt, its name (trained) and `</s>`; with
  ctx.episode_docked < 1 a phrase is plain tokens instead with that chance
  (drawn per item: semi-causal spans of pretraining). Items follow while the
  encoders' max_items and the row hold them whole (the rest counted once as
  truncated_text); a first item too long is cut like any row; unusable items
  are skipped (counted)."""
  _check_encoders(ctx, fmt)
  tok, encoders = ctx.tokenizer, ctx.model_cfg.encoders
  text_size = batch_lib.slot_length(encoders[ctx.text]) if ctx.text else 0
  row = spans_lib.Row(ctx.seq_len, tok.pad)
  row.start_segment()
  row.add_tokens([tok.bos], train=False)
  used: Dict[str, int] = {}  # encoder name -> items of the row so far
  docked: List[Tuple[str, np.ndarray]] = []
  for item in fields["items"]:
    parsed, skip = fmt.parse(item)
    if parsed is None:
      stats[skip] += 1
      continue
    media = [(kind, parsed.fields[f]) for kind, f in fmt.media()]
    encoded = tok.encode(fmt.encoder_text(parsed)) if fmt.encoded else []
    prompt = tok.encode(fmt.prompt(parsed, fmt.eval_template()))
    answer = formats_lib.answer_ids(tok, fmt.target(parsed))
    want: Dict[str, int] = {}  # encoder name -> items this one needs
    for kind, _ in media:
      want[ctx.encoder_for(kind)] = want.get(ctx.encoder_for(kind), 0) + 1
    # semi-causal pretraining: each phrase goes through the encoder with
    # chance ctx.episode_docked, else it is plain tokens (drawn per item)
    dock = bool(encoded and ctx.text) and (ctx.episode_docked >= 1.0
                                           or rng.random() < ctx.episode_docked)
    if dock:
      want[ctx.text] = want.get(ctx.text, 0) + len(formats_lib.chunks(encoded, text_size))
    length = (sum(batch_lib.slot_length(encoders[ctx.encoder_for(kind)]) + 2 for kind, _ in media)
              + len(encoded) + len(prompt) + len(answer))
    if row.length > 1 and (length > row.room or any(
        used.get(n, 0) + k > encoders[n].max_items for n, k in want.items())):
      stats["truncated_text"] += 1
      break
    loaded = [(kind, _load(ctx, kind, value, stats)) for kind, value in media]
    if any(x is None for _, x in loaded):
      continue
    for kind, x in loaded:
      name = ctx.encoder_for(kind)
      _add_media(ctx, row, kind, used.get(name, 0))
      used[name] = used.get(name, 0) + 1
      docked.append((kind, x))
    if dock:
      first = used.get(ctx.text, 0)
      items = fmt.encoder_items(encoders[ctx.text]) - first
      used[ctx.text] = first + _add_encoded(ctx, row, encoded, row.room - len(prompt)
                                            - len(answer), items, stats, first=first)
    elif encoded:
      row.add_tokens(_fit(encoded, max(1, row.room - len(prompt) - len(answer)), stats),
                     train=False)
    row.add_tokens(_fit(prompt, row.room - len(answer), stats), train=False)
    row.add_tokens(_fit(answer, row.room, stats), train=True)
  if row.length == 1:
    return {"ok": False, "stats": stats}
  return _finish(ctx, row, docked, stats)


for _task, _item in formats_lib.EPISODE_ITEM_FORMATS.items():
  TASKS.register(_task)(functools.partial(episode_task, formats_lib.FORMATS.get(_item)))


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
  if tok.eop is None:
    raise ValueError(f"tokenizer {type(tok).__name__} has no eop id (<eop>, the end of a "
                     "paragraph in text documents); add it to a tokenizer.json with "
                     "data/hf_tokenizer.py add_project_specials (import-hf does for a decoder)")
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


