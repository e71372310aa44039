"""Shared pieces of the experiment files: the `arg` string parser and the
pretraining configs' common body.

Each configs/*.py is an experiment file (big_vision style): `get_config(arg)`
parses "size=tiny,runlocal" with `parse_arg` and builds its ConfigDict from
the library's presets (metalm_jax/presets.py: model and data sizes, logical
rules) and trainer defaults (metalm_jax/train/config_defaults.py). Every
field can then be overridden on the command line:
`--config.model.decoder.num_layers=6`.
"""
from __future__ import annotations

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


def pick_size(a, sizes) -> mlc.ConfigDict:
  """The named-field settings `sizes[a.size]` of an experiment file (a dict of
  names -> values) as a ConfigDict; an unknown size is an error naming it."""
  if a.size not in sizes:
    raise ValueError(f"config arg size={a.size!r} is unknown; known: {sorted(sizes)}")
  return mlc.ConfigDict(sizes[a.size])


def pretrain_config(a, s, kind: str, decay: str, end_lr_frac: float) -> mlc.ConfigDict:
  """The body both pretraining files share: the size's model and data presets
  (`kind`: vl | lang), batch, steps, logging and checkpoint cadence, and the
  paper's AdamW (b = 0.9, 0.98; weight decay 0.01) with the size's lr and
  warm-up. `a`: parsed args (steps), `s`: the picked size."""
  c = config_defaults.trainer_config()
  c.model = presets.model_config(s.model)
  c.data = presets.data_config(kind, s.data)
  if kind == "av":
    add_av_encoders(c.model)
  if kind in ("vl", "av"):  # a VL row may dock several images (interleaved documents)
    vision = c.model.encoders.vision
    vision.max_items = max(vision.max_items, presets.DATA_SIZES[s.data].vl_images)
  c.batch_size = s.batch
  c.total_steps = a.steps or s.steps
  c.log_every, c.eval_every = s.log, s.eval
  c.checkpoint.every_steps = s.ckpt
  c.optimizer = config_defaults.optimizer(lr=s.lr, b1=0.9, b2=0.98, weight_decay=0.01,
                                          warmup_steps=s.warmup, decay=decay,
                                          end_lr_frac=end_lr_frac)
  return c


def add_av_encoders(model: mlc.ConfigDict) -> mlc.ConfigDict:
  """A four-modality model: `model` (vision and text encoders) plus an audio
  encoder `audio` (type "whisper") and a video encoder `video` (type "video"),
  from presets.ENCODER_PRESETS, sized for the embedded world's clips (<= 1 s
  of 16 kHz sound; 4 frames at the vision encoder's image size): a clip docks
  8 audio vectors, a video 4 (one per frame: the video preset's "frames"
  pool)."""
  build = presets.ENCODER_PRESETS
  model.encoders.audio = build["whisper"](max_items=1, sample_rate=16000, max_seconds=1.0,
                                          num_vectors=8)
  model.encoders.video = build["video"](max_items=1, frames=4,
                                        image_size=model.encoders.vision.image_size,
                                        num_vectors=4)
  return model
