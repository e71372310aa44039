"""Params on disk without pickle: one safetensors file with '/'-joined names.

A *params dir* holds `params.safetensors` and, optionally, `config.json`
(the model or component config that produced them). Trainer `init_from`,
HF import and export all read and write this format.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Tuple

import flax.linen as nn
import numpy as np
from safetensors.numpy import load, save

from metalm_jax import storage

PARAMS_FILE = "params.safetensors"
CONFIG_FILE = "config.json"


def flatten(tree: Mapping[str, Any], prefix: str = "") -> Dict[str, Any]:
  """{'a': {'b': x}} -> {'a/b': x}."""
  out = {}
  for k, v in tree.items():
    if "/" in str(k):
      raise ValueError(f"param name {k!r} contains '/'")
    name = f"{prefix}{k}"
    if isinstance(v, Mapping):
      out.update(flatten(v, name + "/"))
    else:
      out[name] = v
  return out


def unflatten(flat: Mapping[str, Any]) -> Dict[str, Any]:
  tree: Dict[str, Any] = {}
  for name, v in flat.items():
    node = tree
    *parents, leaf = name.split("/")
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = v
  return tree


def save_params(directory: str, params: Mapping[str, Any],
                config: Optional[Mapping[str, Any]] = None) -> str:
  """Writes params (boxes removed, gathered to host as numpy) and config."""
  flat = {k: np.ascontiguousarray(np.asarray(v)) for k, v in flatten(nn.meta.unbox(params)).items()}
  storage.write_bytes(storage.join(directory, PARAMS_FILE), save(flat))
  if config is not None:
    storage.write_json(storage.join(directory, CONFIG_FILE), config)
  return directory


def load_params(directory: str) -> Tuple[Dict[str, Any], Optional[Dict[str, Any]]]:
  """Returns (params tree of numpy arrays, config dict or None)."""
  path = storage.join(directory, PARAMS_FILE)
  if not storage.exists(path):
    raise FileNotFoundError(f"no {PARAMS_FILE} in params dir {directory!r}")
  params = unflatten(load(storage.read_bytes(path)))
  cfg_path = storage.join(directory, CONFIG_FILE)
  config = storage.read_json(cfg_path) if storage.exists(cfg_path) else None
  return params, config
