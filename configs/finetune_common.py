"""Shared pieces of the finetuning configs (configs/finetune_*.py): one
trainer, new data mixtures, optimizer groups and evaluators.

Every finetune config takes `size` (tiny | paper), `steps` (0 = default) and
`init` (the pretrained workdir, checkpoints dir or params dir; same as
--config.init_from). tiny runs on the embedded world in CPU minutes; paper
uses the real data sets through the sources in metalm_jax/data/sources.py
(their files under config.data.manual_dirs) at the paper's settings.
finetune_caption.py and finetune_vqa.py also take `dataset=NAME`: your own
data set built into config.data.data_dir (docs/your-data.md), trained on its
train split and evaluated on its validation split at any size.
"""
from __future__ import annotations

import ml_collections as mlc

from configs import common
from metalm_jax import presets
from metalm_jax.train import config_defaults

# Param-name regexes (top-level names: decoder, encoders_<name>, connectors_<name>).
DECODER = r"^decoder/"


def frozen(*prefixes: str) -> dict:
  """An optimizer group freezing every param under the given top-level names."""
  return dict(regex=r"^(" + "|".join(prefixes) + r")/", frozen=True, lr_mult=1.0)


def base(a, s, fields, *, kind: str, mixture: dict) -> mlc.ConfigDict:
  """Trainer config for a finetuning run (see the module docstring): the
  size's model / data presets (`s`, pick_size) with `mixture`, a constant lr
  after warm-up unless the size's `fields` say otherwise, then `fields`."""
  c = config_defaults.trainer_config()
  c.model = presets.model_config(s.model)
  c.data = presets.data_config(kind, s.data)
  c.data.mixture = dict(mixture)
  common.set_shapes(c.model, a.get("decoder", ""), a.get("vision", ""))
  c.optimizer.update(decay="constant", end_lr_frac=0.0)
  common.set_fields(c, fields)
  if a.steps:
    c.total_steps = a.steps
  c.init_from = a.init
  if a.size == "paper":
    c.mesh.update(data=1, fsdp=-1, tensor=1)
  return c


def parse(arg, sizes, knobs=(), **extra):
  """(the parsed arg, the size's presets and `knobs`, its fields): see
  common.pick_size."""
  a = common.parse_arg(arg, size="tiny", steps=0, init="", decoder="", vision="", **extra)
  return (a,) + common.pick_size(a, sizes, knobs)


def modality_choice(a, modalities: dict, default):
  """modalities[a.modality] (the world's source for that modality), checked:
  an unknown modality, or one other than image at a size other than tiny
  (only the embedded world has sound and video), is refused naming the arg.
  `default` is the image entry at a.size (the size's own source)."""
  if a.modality not in modalities:
    raise ValueError(f"config arg modality={a.modality!r} is unknown; known: {sorted(modalities)}")
  if a.modality == "image":
    return default
  if a.size != "tiny":
    raise ValueError(f"config arg modality={a.modality!r} has only size=tiny (the embedded "
                     f"world), got size={a.size!r}")
  return modalities[a.modality]


def dataset_source(a, kinds: dict) -> str:
  """The source of your own data set `a.dataset` (built into config.data.data_dir
  with `python -m metalm_jax.data.build --jsonl=NAME:FOLDER`; data/user_sets.py)
  for `a.modality` (kinds: modality -> the source's suffix)."""
  if a.modality not in kinds:
    raise ValueError(f"config arg modality={a.modality!r} has no source of a data set "
                     f"(dataset={a.dataset!r}); known: {sorted(kinds)}")
  return f"{a.dataset}_{kinds[a.modality]}"


def evaluator(type_: str, source: str, every: int, **kw) -> dict:
  return dict(type=type_, source=source, every_steps=every, **kw)
