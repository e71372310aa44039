"""Reading a local HF model directory without unpickling untrusted data.

Weights come from `model.safetensors` (or a sharded `model.safetensors.index.json`);
a PyTorch `pytorch_model.bin` is read only through `torch.load(weights_only=True)`.
"""
from __future__ import annotations

import json
# HF model dirs are read locally by intent (os, open): safetensors memory-maps
# them and torch.load takes a local file; they are inputs the user downloaded.
import os
from typing import Dict, Mapping, Tuple

import numpy as np

SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
TORCH_BIN = "pytorch_model.bin"


def read_config(model_dir: str) -> dict:
  path = os.path.join(model_dir, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"model_dir={model_dir!r} has no config.json")
  with open(path) as f:
    return json.load(f)


def _load_bin(path: str) -> Dict[str, np.ndarray]:
  import torch  # optional dependency (extra "hf")
  state = torch.load(path, map_location="cpu", weights_only=True)
  return {k: v.detach().to(torch.float32).numpy() if v.is_floating_point() else v.numpy()
          for k, v in state.items()}


def load_safetensors(path: str) -> Dict[str, np.ndarray]:
  """numpy arrays; bfloat16 tensors (numpy has no such dtype) come back as float32."""
  from safetensors import safe_open
  from safetensors.numpy import load_file
  try:
    return dict(load_file(path))
  except TypeError:  # a bfloat16 tensor: read through JAX, which has the dtype
    out = {}
    with safe_open(path, framework="flax") as f:
      for k in f.keys():
        x = f.get_tensor(k)
        out[k] = np.asarray(x.astype("float32") if x.dtype.name == "bfloat16" else x)
    return out


def read_weights(model_dir: str) -> Dict[str, np.ndarray]:
  """All tensors of the checkpoint as numpy arrays, by HF name."""
  single = os.path.join(model_dir, SAFETENSORS)
  if os.path.exists(single):
    return load_safetensors(single)
  index = os.path.join(model_dir, SAFETENSORS_INDEX)
  if os.path.exists(index):
    with open(index) as f:
      shards = sorted(set(json.load(f)["weight_map"].values()))
    out: Dict[str, np.ndarray] = {}
    for shard in shards:
      out.update(load_safetensors(os.path.join(model_dir, shard)))
    return out
  binary = os.path.join(model_dir, TORCH_BIN)
  if os.path.exists(binary):
    return _load_bin(binary)
  raise FileNotFoundError(
      f"model_dir={model_dir!r} has none of {SAFETENSORS}, {SAFETENSORS_INDEX}, {TORCH_BIN}")


def find_prefix(weights: Mapping[str, np.ndarray], anchor: str) -> str:
  """The wrapper prefix ('bert.', 'transformer.', 'vision_model.', '') found in
  front of `anchor` (the shortest, if several)."""
  hits = [k[:-len(anchor)] for k in weights if k.endswith(anchor)]
  if not hits:
    raise KeyError(f"no weight named '*{anchor}' in the checkpoint; "
                   f"first names: {sorted(weights)[:5]}")
  return min(hits, key=len)


class WeightReader:
  """Hands out weights by name and remembers which were used, so the
  converter can report (and count) what it skipped."""

  def __init__(self, weights: Mapping[str, np.ndarray], prefix: str = ""):
    self._w = {k: np.asarray(v) for k, v in weights.items()}
    self._used = set()
    self.prefix = prefix

  def __call__(self, name: str, shape=None) -> np.ndarray:
    """The weight `prefix + name` as float32."""
    return self.absolute(self.prefix + name, shape)

  def absolute(self, name: str, shape=None) -> np.ndarray:
    """The weight `name` (no prefix), e.g. GPT-2's 'lm_head.weight'."""
    if name not in self._w:
      raise KeyError(f"checkpoint is missing weight {name!r}")
    arr = self._w[name].astype(np.float32)
    if shape is not None and arr.shape != tuple(shape):
      raise ValueError(f"weight {name!r} has shape {arr.shape}, expected {tuple(shape)}")
    self._used.add(name)
    return arr

  def unused(self):
    return sorted(set(self._w) - self._used)
