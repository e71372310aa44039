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
from metalm_jax.models import layout

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


def _spec(tree) -> Dict[str, Tuple[tuple, str]]:
  return {n: (tuple(np.shape(x)), str(np.dtype(x.dtype)))
          for n, x in flatten(nn.meta.unbox(tree)).items()}


def check_params(want: Mapping[str, Any], have: Mapping[str, Any], where: str,
                 dtypes: bool = False) -> None:
  """Loaded params `have` against the model's `want` (arrays or
  ShapeDtypeStructs): one ValueError listing every missing, unexpected and
  wrong-shape (and, with `dtypes`, wrong-dtype) name, and every tensor holding
  a NaN or Inf."""
  w, h = _spec(want), _spec(have)
  problems = []
  missing, extra = sorted(set(w) - set(h)), sorted(set(h) - set(w))
  if missing:
    problems.append(f"missing {missing}")
  if extra:
    problems.append(f"unexpected {extra}")
  differ = [f"{k} {h[k][0]} {h[k][1]} (model: {w[k][0]} {w[k][1]})" for k in sorted(set(w) & set(h))
            if h[k][0] != w[k][0] or (dtypes and h[k][1] != w[k][1])]
  if differ:
    problems.append(f"{'shape/dtype' if dtypes else 'shape'} differs: {differ}")
  bad = [k for k, x in flatten(nn.meta.unbox(have)).items()
         if np.issubdtype(np.asarray(x).dtype, np.inexact) and not np.isfinite(np.asarray(x)).all()]
  if bad:
    problems.append(f"NaN/Inf values in {bad}")
  if problems:
    raise ValueError(f"{where}: loaded params do not match the model: " + "; ".join(problems))


def load_params(directory: str, like: Optional[Mapping[str, Any]] = None
                ) -> Tuple[Dict[str, Any], Optional[Dict[str, Any]]]:
  """Returns (params tree of numpy arrays, config dict or None). With `like`
  (a params tree or its shapes) the layer stacks are converted to its layout
  (unrolled `layers_<i>` <-> scanned `layers`; metalm_jax/models/layout.py)."""
  path = storage.join(directory, PARAMS_FILE)
  if not storage.exists(path):
    raise FileNotFoundError(f"no {PARAMS_FILE} in params dir {directory!r}")
  params = unflatten(load(storage.read_bytes(path)))
  if like is not None:
    params = layout.match(params, like)
  cfg_path = storage.join(directory, CONFIG_FILE)
  config = storage.read_json(cfg_path) if storage.exists(cfg_path) else None
  return params, config
