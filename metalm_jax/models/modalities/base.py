"""The modality record: everything one kind of docked input needs, in one
registry entry (`MODALITIES`, keyed by the modality's name).

A record says how its items appear in the batch contract (metalm_jax/batch.py:
the input arrays of an encoder of its type, and how many vectors one item
docks), which flax module encodes them, the encoder preset it starts from
(tiny sizes; every field overridable), how a raw input becomes one item (the
loader the pipeline, the evaluators and the serving Predictor share), and the
tokenizer's brackets around a docked item. The pipeline, the model, the
presets, the Predictor and the evaluators all read it from here.

Adding a modality is one file in this folder that builds a `Modality` and
registers it, plus its import in `__init__.py` (docs/model.md shows the steps).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, Iterator, Optional, Tuple

import jax.numpy as jnp

from metalm_jax.registry import Registry

# (enc_cfg, batch_size) -> {array name: (shape, dtype)} of one encoder's inputs
InputSpec = Callable[[Any, int], Dict[str, Tuple[tuple, Any]]]
# (value, enc_cfg, (mean, std), stats) -> one item's float32 input, or None
# when the value is unusable (the reason counted in `stats`)
Loader = Callable[[Any, Any, Any, dict], Any]


@dataclasses.dataclass(frozen=True)
class Modality:
  """One modality. `encoder_type` is the value of `model.encoders.<name>.type`
  that selects it; items of a modality with a `load` are docked whole between
  its `brackets` (images, sound clips, videos), the text modality's spans are
  laid out by the pipeline's span code instead."""
  name: str                 # image | text | audio | video
  encoder_type: str         # model.encoders.<name>.type
  encoder: Any              # flax module (cfg, dtype)(inputs, deterministic) -> [B, N, T, width]
  preset: Callable[..., Any]  # **overrides -> the encoder's ConfigDict (presets.py builders)
  inputs: InputSpec         # the encoder's arrays in the batch contract
  slot_length: Callable[[Any], int]  # enc_cfg -> vectors one item docks (T)
  key: str                  # the main input array (pixels, tokens, waveform, frames)
  brackets: Optional[Tuple[str, str]] = None  # tokenizer attributes of <x> and </x>
  load: Optional[Loader] = None
  check_config: Optional[Callable[[Any, str], None]] = None  # (enc_cfg, field) -> raises
  # enc_cfg -> {params subtree: (positions per item, attention context)} for
  # the FLOPs count (train/metrics.py) where parts of the encoder see other
  # lengths than its docked vectors (the video encoder's per-frame ViT).
  flops_tokens: Optional[Callable[[Any], Dict[str, Tuple[int, int]]]] = None

  @property
  def docks_whole_items(self) -> bool:
    return self.load is not None


MODALITIES = Registry("modality")


def register(m: Modality) -> Modality:
  """Adds `m`; its name and its encoder type must both be new."""
  taken = {MODALITIES.get(n).encoder_type: n for n in MODALITIES}
  if m.encoder_type in taken:
    raise ValueError(f"encoder type {m.encoder_type!r} of modality {m.name!r} is already "
                     f"modality {taken[m.encoder_type]!r}'s")
  return MODALITIES.register(m.name)(m)


def encoder_types() -> Dict[str, str]:
  """{encoder type: modality name}."""
  return {MODALITIES.get(n).encoder_type: n for n in MODALITIES}


def by_encoder_type(enc_type: str) -> Modality:
  """The record of an encoder type; an unknown one is a KeyError naming the known."""
  types = encoder_types()
  if enc_type not in types:
    raise KeyError(f"unknown encoder type {enc_type!r}; known: {sorted(types)}")
  return MODALITIES.get(types[enc_type])


def media_kinds() -> Iterator[str]:
  """The modalities docked as whole items (with a loader and brackets)."""
  return iter([n for n in MODALITIES if MODALITIES.get(n).docks_whole_items])


def kind_of_encoder(enc_type: str) -> Optional[str]:
  """The whole-item modality an encoder type docks (None for text encoders)."""
  m = by_encoder_type(enc_type)
  return m.name if m.docks_whole_items else None


def slot_length(enc_cfg) -> int:
  """Vectors one item of this encoder docks (T)."""
  return by_encoder_type(enc_cfg.type).slot_length(enc_cfg)


def brackets(tokenizer, kind: str) -> tuple:
  """(open id, close id) of modality `kind`; a clear error when the tokenizer lacks them."""
  m = MODALITIES.get(kind)
  if m.brackets is None:
    raise ValueError(f"modality {kind!r} is not docked between brackets")
  ids = tuple(getattr(tokenizer, a, None) for a in m.brackets)
  if None in ids:
    raise ValueError(f"tokenizer {type(tokenizer).__name__} has no {m.brackets[0]} / "
                     f"{m.brackets[1]} ids (the {kind} brackets); train one with them "
                     "(data/tokenizer.py), or add them to a tokenizer.json (data/hf_tokenizer.py "
                     "add_project_specials; import-hf does for a decoder)")
  return ids


def count(stats: dict, key: str, n: int = 1) -> None:
  stats[key] = stats.get(key, 0) + n


def merge_counts(stats: dict, counts: dict) -> None:
  for k, v in counts.items():
    count(stats, k, v)


def valid_only(x, inputs):
  """`x` [B, N, ...] with the items that `inputs["valid"]` [B, N] marks
  invalid set to 0, so whatever they hold (NaN included) reaches neither the
  encoder's outputs nor the gradients (no `valid`: every item is used)."""
  valid = inputs.get("valid")
  if valid is None:
    return x
  return jnp.where(valid.reshape(valid.shape + (1,) * (x.ndim - 2)), x, jnp.zeros((), x.dtype))
