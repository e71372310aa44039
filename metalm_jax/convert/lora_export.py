"""LoRA adapters at export (models/lora.py): merged into the base kernels, or
kept apart with an adapters-only params dir.

    merge     W <- W + (alpha / rank) * A . B for every adapted projection
              (float64 sum, cast to the kernel's dtype), adapters removed;
              the config's `lora.enabled` becomes False. Serving then costs
              what the base costs.
    separate  the adapters stay their own tensors (the model runs them);
              ADAPTERS_DIR holds a params dir of only the adapters
              (`decoder/layers_0/attn/query/lora_a`, ...; config.json: the
              `lora` section and its scale), to ship on top of a base.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Tuple

import flax.linen as nn
import jax
import numpy as np

from metalm_jax import params_io
from metalm_jax.models import lora as lora_lib

MODES = ("merge", "separate")
ADAPTERS_DIR = "lora"


def check_mode(mode: str, field: str = "lora") -> str:
  if mode not in MODES:
    raise ValueError(f"{field}={mode!r}: expected one of {MODES}")
  return mode


def _section_dict(section) -> Dict[str, Any]:
  return section.to_dict() if hasattr(section, "to_dict") else dict(section)


def lora_section(decoder_section) -> Optional[Dict[str, Any]]:
  """The decoder's `lora` section as a dict when it is on, else None."""
  section = decoder_section.get("lora")
  return _section_dict(section) if lora_lib.enabled(section) else None


def summary(decoder_section, mode: str) -> Optional[Dict[str, Any]]:
  """What an export records about the adapters (None without LoRA)."""
  section = lora_section(decoder_section)
  if section is None:
    return None
  return {"mode": mode, "rank": int(section["rank"]), "alpha": float(section["alpha"]),
          "scale": float(section["alpha"]) / int(section["rank"]),
          "targets": list(section["targets"])}


def decoder_tree(decoder_section, tree, mode: str):
  """The decoder params an export writes as weights of its base modules:
  merged (mode "merge") or the base alone ("separate"); `tree` itself
  without adapters. Adapters under a section with LoRA off are an error."""
  tree = jax.tree.map(np.asarray, nn.meta.unbox(tree))
  if not lora_lib.has_adapters(tree):
    return tree
  section = lora_section(decoder_section)
  if section is None:
    raise ValueError("the decoder params hold LoRA adapters (lora_a / lora_b) but its config "
                     "section has lora.enabled False: nothing says how to scale them")
  if check_mode(mode) == "merge":
    return lora_lib.merge(tree, float(section["alpha"]) / int(section["rank"]))
  return lora_lib.split(tree)[0]


def merge_model(model_cfg: Mapping[str, Any], params) -> Tuple[Dict[str, Any], Dict[str, Any]]:
  """(model config dict, params) with the decoder's adapters merged and LoRA
  switched off in the config; unchanged (as dicts) without LoRA."""
  cfg = _section_dict(model_cfg)
  if lora_section(cfg["decoder"]) is None:
    return cfg, params
  params = {**params, "decoder": decoder_tree(cfg["decoder"], params["decoder"], "merge")}
  return {**cfg, "decoder": lora_lib.merged_section(cfg["decoder"])}, params


def save_adapters(directory: str, decoder_section, decoder_params) -> str:
  """Writes the params dir of only the decoder's adapters (names under
  `decoder/`, as in the whole model) with the `lora` section; returns it."""
  section = lora_section(decoder_section)
  _, adapters = lora_lib.split(nn.meta.unbox(decoder_params))
  if section is None or not adapters:
    raise ValueError("save_adapters: the decoder has no LoRA adapters (lora.enabled False or "
                     "no lora_a / lora_b params)")
  scale = float(section["alpha"]) / int(section["rank"])
  return params_io.save_params(directory, {"decoder": adapters},
                               {"component": "lora", "lora": section, "scale": scale})
