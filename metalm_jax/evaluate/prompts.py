"""Prompt builders: (images, encoded text, plain text, demonstrations) -> a
left-padded batch in the contract of metalm_jax/batch.py.

A prompt is a list of parts:
  Text(str)         plain decoder tokens;
  Image(pixels)     `<image>`, then `slot_length` positions docked to its own
                    item of a vision encoder, then `</image>`;
  Audio(waveform), Video(frames)   the same with `<audio>` ... `</audio>` on
                    an audio ("whisper") encoder, `<video>` ... `</video>` on
                    a video encoder (models/modalities/: the modalities);
  EncodedText(str)  one decoder position per token, each docked one-to-one to
                    the same token of its own item of a language encoder
                    (the decoder input id there is the original token);
                    `ids` gives the tokens when they are not `encode(text)`
                    (a piece of a longer text cut at a token boundary);
  Tokens(ids)       raw decoder ids, not docked (special tokens that text
                    cannot carry, e.g. the `</s>` after an ICL demonstration);
                    `text` is only how the predictions file shows them.
Encoder items are numbered in order of appearance within each example.

The tokenizer is any object with `encode(str) -> list[int]`, `decode` and the
ids `bos`, `eos`, `pad`, `image_start`, `image_end`. The encoded-text spans use
the same token ids for the encoder (a shared vocabulary).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from metalm_jax import batch as batch_lib
from metalm_jax.data import formats as formats_lib
from metalm_jax.models import modalities


@dataclasses.dataclass(frozen=True)
class Text:
  text: str


@dataclasses.dataclass(frozen=True, eq=False)
class Image:
  """pixels: float [H, W, 3], already normalised for the encoder."""
  pixels: Any
  encoder: Optional[str] = None  # config name; default: the only "vit" encoder


@dataclasses.dataclass(frozen=True, eq=False)
class Audio:
  """waveform: float [S], mono at the encoder's sample_rate, S = its max_seconds."""
  waveform: Any
  encoder: Optional[str] = None  # config name; default: the only "whisper" encoder


@dataclasses.dataclass(frozen=True, eq=False)
class Video:
  """frames: float [F, H, W, 3], normalised like Image pixels."""
  frames: Any
  encoder: Optional[str] = None  # config name; default: the only "video" encoder


# Docked whole-item parts -> their modality (models/modalities/).
MEDIA_PARTS = {Image: "image", Audio: "audio", Video: "video"}


def part_encoder_type(part) -> Optional[str]:
  """The encoder type a part docks on (None for plain text and tokens)."""
  if type(part) in MEDIA_PARTS:
    return modalities.MODALITIES.get(MEDIA_PARTS[type(part)]).encoder_type
  if isinstance(part, EncodedText):
    return modalities.MODALITIES.get("text").encoder_type
  return None


@dataclasses.dataclass(frozen=True)
class EncodedText:
  text: str
  encoder: Optional[str] = None  # config name; default: the only "bert" encoder
  ids: Optional[Tuple[int, ...]] = None  # the tokens; default: encode(text)


@dataclasses.dataclass(frozen=True)
class Tokens:
  ids: Tuple[int, ...]
  text: str = ""  # display only (predictions files)

  def __post_init__(self):
    if not self.ids or any(not isinstance(i, (int, np.integer)) or i < 0 for i in self.ids):
      raise ValueError(f"Tokens.ids={self.ids!r} must be a non-empty tuple of ids >= 0")


Part = Any  # Text | Image | Audio | Video | EncodedText | Tokens


@dataclasses.dataclass
class _Row:
  """One example laid out without padding."""
  tokens: List[int] = dataclasses.field(default_factory=list)
  dock: List[int] = dataclasses.field(default_factory=list)  # -1 = not docked
  items: Dict[str, List[Any]] = dataclasses.field(default_factory=dict)


def _encoder_for(model_cfg, name: Optional[str], enc_type: str, part) -> str:
  if name is not None:
    if name not in model_cfg.encoders or model_cfg.encoders[name].type != enc_type:
      raise ValueError(f"{type(part).__name__}.encoder={name!r} is not a {enc_type!r} "
                       "encoder of the model; encoders: "
                       f"{dict((k, v.type) for k, v in model_cfg.encoders.items())}")
    return name
  names = [k for k in sorted(model_cfg.encoders) if model_cfg.encoders[k].type == enc_type]
  if len(names) != 1:
    raise ValueError(f"{type(part).__name__}.encoder=None is ambiguous: the model has "
                     f"{len(names)} {enc_type!r} encoders ({names}); name one")
  return names[0]


def _new_item(row: _Row, model_cfg, name: str, value) -> int:
  items = row.items.setdefault(name, [])
  cap = model_cfg.encoders[name].max_items
  if len(items) >= cap:
    raise ValueError(f"example needs more than model.encoders.{name}.max_items={cap} items")
  items.append(value)
  return len(items) - 1


@functools.singledispatch
def _lay_out(part, row: _Row, tok, model_cfg, offsets) -> None:
  raise TypeError(f"prompt part of type {type(part).__name__} is not Text, Image, Audio, "
                  "Video, EncodedText or Tokens")


@_lay_out.register
def _(part: Text, row, tok, model_cfg, offsets):
  ids = list(tok.encode(part.text))
  row.tokens += ids
  row.dock += [-1] * len(ids)


@_lay_out.register
def _(part: Tokens, row, tok, model_cfg, offsets):
  vocab = model_cfg.decoder.vocab_size
  if max(part.ids) >= vocab:
    raise ValueError(f"Tokens.ids has id {max(part.ids)} >= model.decoder.vocab_size={vocab}")
  row.tokens += [int(i) for i in part.ids]
  row.dock += [-1] * len(part.ids)


def _lay_out_media(part, row, tok, model_cfg, offsets):
  """A whole docked item (Image, Audio, Video): bracket, its span, bracket."""
  kind = modalities.MODALITIES.get(MEDIA_PARTS[type(part)])
  name = _encoder_for(model_cfg, part.encoder, kind.encoder_type, part)
  cfg = model_cfg.encoders[name]
  value = np.asarray(getattr(part, dataclasses.fields(part)[0].name), np.float32)
  want = kind.inputs(cfg, 1)[kind.key][0][2:]
  if value.shape != tuple(want):
    raise ValueError(f"{type(part).__name__}.{dataclasses.fields(part)[0].name} has shape "
                     f"{value.shape}, model.encoders.{name} expects {tuple(want)}")
  start, end = modalities.brackets(tok, kind.name)
  item = _new_item(row, model_cfg, name, value)
  t = batch_lib.slot_length(cfg)
  base = offsets[name] + item * t
  row.tokens += [start] + [tok.pad] * t + [end]
  row.dock += [-1] + list(range(base, base + t)) + [-1]


for _cls in MEDIA_PARTS:
  _lay_out.register(_cls)(_lay_out_media)


@_lay_out.register
def _(part: EncodedText, row, tok, model_cfg, offsets):
  name = _encoder_for(model_cfg, part.encoder, "bert", part)
  cfg = model_cfg.encoders[name]
  ids = list(tok.encode(part.text) if part.ids is None else part.ids)
  t = batch_lib.slot_length(cfg)
  if not ids:
    raise ValueError(f"EncodedText.text={part.text!r} encodes to no tokens")
  if len(ids) > t:
    raise ValueError(f"EncodedText.text has {len(ids)} tokens > model.encoders.{name}.max_len={t}")
  if max(ids) >= cfg.vocab_size:
    raise ValueError(f"EncodedText token id {max(ids)} >= model.encoders.{name}.vocab_size="
                     f"{cfg.vocab_size}")
  item = _new_item(row, model_cfg, name, ids)
  base = offsets[name] + item * t
  row.tokens += ids
  row.dock += list(range(base, base + len(ids)))


def _fill_encoder(enc: Dict[str, np.ndarray], cfg, b: int, items: List[Any]) -> None:
  for n, value in enumerate(items):
    if "valid" in enc:  # whole items: pixels, waveform, frames
      key, = (k for k in enc if k != "valid")
      enc[key][b, n] = value
      enc["valid"][b, n] = True
    else:
      enc["tokens"][b, n, :len(value)] = value
      enc["mask"][b, n, :len(value)] = True


def _rows(prompts: Sequence[Sequence[Part]], tokenizer, model_cfg, add_bos: bool) -> List[_Row]:
  if not prompts:
    raise ValueError("prompts is empty")
  offsets = batch_lib.dock_offsets(model_cfg.encoders)
  rows = []
  for parts in prompts:
    row = _Row(tokens=[tokenizer.bos] if add_bos else [], dock=[-1] if add_bos else [])
    for part in parts:
      _lay_out(part, row, tokenizer, model_cfg, offsets)
    if not row.tokens:
      raise ValueError("a prompt has no tokens (empty parts and add_bos=False)")
    rows.append(row)
  return rows


def prompt_lengths(prompts: Sequence[Sequence[Part]], tokenizer, model_cfg,
                   add_bos: bool = True) -> List[int]:
  """Decoder positions each prompt takes in `build_batch` (without padding)."""
  return [len(r.tokens) for r in _rows(prompts, tokenizer, model_cfg, add_bos)]


def build_batch(prompts: Sequence[Sequence[Part]], tokenizer, model_cfg,
                seq_len: Optional[int] = None, add_bos: bool = True) -> Dict[str, Any]:
  """Numpy batch (contract of metalm_jax/batch.py), one row per prompt, LEFT
  padded to `seq_len` (default: the longest prompt). Positions count from each
  row's first real token; targets are the next input token; loss_mask is 0."""
  rows = _rows(prompts, tokenizer, model_cfg, add_bos)
  longest = max(len(r.tokens) for r in rows)
  seq_len = longest if seq_len is None else seq_len
  if longest > seq_len:
    raise ValueError(f"seq_len={seq_len} is shorter than the longest prompt ({longest} tokens)")
  out = batch_lib.dummy_batch(model_cfg, len(rows), seq_len)
  out["tokens"][:] = tokenizer.pad
  out["targets"][:] = tokenizer.pad
  for b, row in enumerate(rows):
    n = len(row.tokens)
    s = seq_len - n
    out["tokens"][b, s:] = row.tokens
    out["targets"][b, s:-1] = row.tokens[1:]
    out["segment_ids"][b, s:] = 1
    out["positions"][b, s:] = np.arange(n)
    dock = np.asarray(row.dock)
    out["dock_mask"][b, s:] = dock >= 0
    out["dock_index"][b, s:] = np.maximum(dock, 0)
    for name, items in row.items.items():
      _fill_encoder(out["encoders"][name], model_cfg.encoders[name], b, items)
  return out


def icl_parts(demonstrations: Sequence[Tuple[Sequence[Part], str]], query: Sequence[Part],
              tokenizer) -> List[Part]:
  """In-context layout, with exactly the separators of training rows
  (data/formats.py): each demonstration's input parts (docked through its own
  encoder items), its label as plain tokens, then `</s>`, in the given order;
  then the query parts. `build_batch` adds the one `<s>` in front."""
  end = Tokens((formats_lib.answer_end_id(tokenizer),), formats_lib.ANSWER_END_TEXT)
  parts: List[Part] = []
  for i, demo in enumerate(demonstrations):
    if len(demo) != 2:
      raise ValueError(f"demonstrations[{i}] must be (input_parts, label), got {len(demo)} fields")
    inputs, label = demo
    parts += list(inputs)
    parts += [Text(label), end]
  return parts + list(query)


def build_icl_batch(examples: Sequence[Tuple[Sequence[Tuple[Sequence[Part], str]], Sequence[Part]]],
                    tokenizer, model_cfg, seq_len: Optional[int] = None,
                    add_bos: bool = True) -> Dict[str, Any]:
  """One row per (demonstrations, query) pair, laid out by `icl_parts`."""
  return build_batch([icl_parts(d, q, tokenizer) for d, q in examples], tokenizer, model_cfg,
                     seq_len=seq_len, add_bos=add_bos)
