"""What every evaluator shares: the type registry with each type's config
defaults, the environment an evaluator runs in, the example record, config
resolution and small result helpers."""
from __future__ import annotations

import dataclasses
import logging
from typing import Any, Callable, Dict, List, Optional, Sequence

import ml_collections
import numpy as np

from metalm_jax.evaluate import placement as placement_lib
from metalm_jax.evaluate import prompts
from metalm_jax.registry import Registry

EVALUATORS = Registry("evaluator")
# Fields of every type; `prompt` None: the format's evaluation template;
# `blind` True: every docked image / sound clip / video is replaced by a blank
# one (all zeros: silence, a flat frame at the normalisation mean), the
# modality-blind baseline of the same model on the same prompts.
DEFAULTS = dict(source="", split="validation", num_examples=64, batch_size=16, seed=0,
                max_new_tokens=8, method="greedy", beam_size=4, length_penalty=0.0,
                prompt=None, format="", num_baseline_examples=256, bucket=16, blind=False)
_TYPE_DEFAULTS: Dict[str, Dict[str, Any]] = {}


def register(name: str, **type_defaults) -> Callable:
  """Decorator: fn(env, ev) -> ({metric: value}, [prediction rows]) as type `name`."""
  def deco(fn):
    EVALUATORS.register(name)(fn)
    _TYPE_DEFAULTS[name] = type_defaults
    return fn
  return deco


def defaults(ev_type: str) -> Dict[str, Any]:
  if ev_type not in _TYPE_DEFAULTS:
    raise ValueError(f"evals.*.type={ev_type!r} is unknown; known: {sorted(_TYPE_DEFAULTS)}")
  return {**DEFAULTS, **_TYPE_DEFAULTS[ev_type]}


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
  parts: List[Any]            # the query prompt (prompts.Text / Image / EncodedText / Tokens)
  label: str                  # the answer as plain text (ICL demonstrations, generation target)
  refs: List[str]             # references for the metric
  label_id: int = -1          # class index (classify / icl on classes)


def mean(values: Sequence[float], what: str) -> float:
  """Mean of `values`; NaN and a warning when there are none (never a perfect score)."""
  if not len(values):
    logging.warning("%s over no examples: NaN", what)
    return float("nan")
  return float(np.mean(values))


def prompt_text(parts) -> str:
  """A prompt for the predictions file: `<image>` / `<audio>` / `<video>`,
  [encoded text], plain text, raw tokens by their display text (`</s>`)."""
  out = []
  for p in parts:
    if type(p) in prompts.MEDIA_PARTS:
      out.append(f"<{prompts.MEDIA_PARTS[type(p)]}>")
    elif isinstance(p, prompts.EncodedText):
      out.append(f"[{p.text}]")
    else:
      out.append(p.text)
  return " ".join(out)


def records(examples, preds, **extra) -> List[Dict[str, Any]]:
  """One predictions-file row per example (`extra`: per-example columns)."""
  rows = []
  for i, (ex, pred) in enumerate(zip(examples, preds)):
    row = {"index": ex.index, "prompt": prompt_text(ex.parts), "prediction": pred,
           "references": ex.refs}
    for k, v in extra.items():
      row[k] = v[i]
    rows.append(row)
  return rows
