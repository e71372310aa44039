"""Shared pieces of the experiment files: the `arg` string parser, the
size tables and the pretraining configs' common body.

Each configs/*.py is an experiment file (big_vision style): `get_config(arg)`
parses "size=tiny,runlocal" with `parse_arg` and builds its ConfigDict from
the library's defaults, each set in one place: the trainer's fields in
metalm_jax/train/config_defaults.py, the model and data sections (and their
named sizes) in metalm_jax/presets.py. An experiment file sets only what its
experiment changes. Its `SIZES` table maps a size to `model` / `data` (preset
names), the file's own named settings (`knobs`, e.g. a source) and run-config
fields under their real dotted names (`"optimizer.lr": 2e-3`), applied by
`set_fields`. Every field can then be overridden on the command line:
`--config.model.decoder.num_layers=6`.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Tuple

import ml_collections as mlc

from metalm_jax import presets
from metalm_jax.train import config_defaults


def parse_arg(arg, **defaults):
  """'size=tiny,runlocal' -> ConfigDict(size='tiny', runlocal=True) over defaults.

  Values are converted to the type of the default; an unknown key is an error.
  """
  out = dict(defaults)
  for item in filter(None, (arg or "").split(",")):
    key, _, value = item.partition("=")
    if key not in defaults:
      raise ValueError(f"config arg {key!r} is unknown; known: {sorted(defaults)}")
    default = defaults[key]
    if not _:
      value = True
    elif isinstance(default, bool):
      value = value.lower() in ("1", "true", "yes")
    elif default is not None:
      value = type(default)(value)
    out[key] = value
  return mlc.ConfigDict(out)


PRESET_KEYS = ("model", "data")  # a size's preset names (presets.py)


def pick_size(a, sizes, knobs: Tuple[str, ...] = ()) -> Tuple[mlc.ConfigDict, Dict[str, Any]]:
  """`sizes[a.size]` split into (its presets and `knobs` as a ConfigDict,
  {dotted run-config field: value}); an unknown size is an error naming it."""
  if a.size not in sizes:
    raise ValueError(f"config arg size={a.size!r} is unknown; known: {sorted(sizes)}")
  entry = dict(sizes[a.size])
  named = {k: entry.pop(k) for k in PRESET_KEYS + tuple(knobs) if k in entry}
  return mlc.ConfigDict(named), entry


def set_fields(c: mlc.ConfigDict, fields: Mapping[str, Any]) -> mlc.ConfigDict:
  """Sets each dotted field of `c` ('optimizer.lr'); a field that `c` does not
  have is an error naming it (a misspelt size table would be ignored)."""
  for field, value in fields.items():
    *parents, leaf = field.split(".")
    node = c
    for p in parents:
      if p not in node:
        raise ValueError(f"size field {field!r}: the config has no {p!r} section")
      node = node[p]
    if leaf not in node:
      raise ValueError(f"size field {field!r} is not a config field")
    node[leaf] = value
  return c


def pretrain_config(a, s, fields: Mapping[str, Any], kind: str) -> mlc.ConfigDict:
  """The body the pretraining files share: the size's model and data presets
  (`kind`: vl | lang | av) and its fields (batch, steps, cadences, the lr
  schedule; the paper's AdamW b = 0.9, 0.98, weight decay 0.01 are the
  defaults). `a`: parsed args (steps: 0 = the size's), `s`, `fields`: the
  picked size (pick_size)."""
  c = config_defaults.trainer_config()
  c.model = presets.model_config(s.model)
  c.data = presets.data_config(kind, s.data)
  set_fields(c, fields)
  if a.steps:
    c.total_steps = a.steps
  if kind == "av":
    add_av_encoders(c.model)
  if kind in ("vl", "av"):  # a VL row may dock several images (interleaved documents)
    vision = c.model.encoders.vision
    vision.max_items = max(vision.max_items, presets.DATA_SIZES[s.data].vl_images)
  return c


# The decoder's size and compute fields, kept when `decoder=FAMILY` swaps its shape.
DECODER_DIMS = ("vocab_size", "num_layers", "emb_dim", "num_heads", "mlp_dim", "max_len",
                "dropout", "scan_layers", "remat_policy", "attention_impl")
# `vision=` arg: the vision tower's shape (presets.vit fields), sizes kept.
VISION_SHAPES = {"clip": presets.vit, "siglip": presets.siglip}
VISION_DIMS = ("max_items", "image_size", "patch_size", "num_layers", "emb_dim", "num_heads",
               "mlp_dim", "dropout", "connector", "scan_layers", "remat_policy",
               "attention_impl")


def set_shapes(model: mlc.ConfigDict, decoder: str = "", vision: str = "") -> mlc.ConfigDict:
  """The `decoder=` / `vision=` args of the experiment files: the decoder
  becomes family `decoder` (presets.FAMILIES: gpt2, llama, qwen2, gemma) and
  the vision tower `vision` (clip, siglip) at the model's sizes ("" keeps
  it). E.g. size=tiny,decoder=llama,vision=siglip is the tiny model with
  modern_vl's shapes."""
  if decoder:
    if decoder not in presets.FAMILIES:
      raise ValueError(f"config arg decoder={decoder!r} is unknown; known: "
                       f"{list(presets.FAMILIES)}")
    dims = {k: model.decoder[k] for k in DECODER_DIMS}
    model.decoder = presets.decoder_family(decoder, **dims)
  if vision:
    if vision not in VISION_SHAPES:
      raise ValueError(f"config arg vision={vision!r} is unknown; known: {sorted(VISION_SHAPES)}")
    if "vision" not in model.encoders:
      raise ValueError(f"config arg vision={vision!r}: this model has no vision encoder")
    old = model.encoders.vision
    model.encoders.vision = VISION_SHAPES[vision](**{k: old[k] for k in VISION_DIMS})
  return model


def add_av_encoders(model: mlc.ConfigDict) -> mlc.ConfigDict:
  """A four-modality model: `model` (vision and text encoders) plus an audio
  encoder `audio` (type "whisper") and a video encoder `video` (type "video"),
  from the presets of their modalities, sized for the embedded world's clips (<= 1 s
  of 16 kHz sound; 4 frames at the vision encoder's image size): a clip docks
  8 audio vectors, a video 4 (one per frame: the video preset's "frames"
  pool)."""
  model.encoders.audio = presets.whisper(max_items=1, sample_rate=16000, max_seconds=1.0,
                                         num_vectors=8)
  model.encoders.video = presets.video(max_items=1, frames=4,
                                       image_size=model.encoders.vision.image_size,
                                       num_vectors=4)
  return model
