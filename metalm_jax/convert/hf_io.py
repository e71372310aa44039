"""Reading an HF model directory (local or gs://) without unpickling untrusted data.

Weights come from `model.safetensors` (or a sharded `model.safetensors.index.json`);
a PyTorch `pytorch_model.bin` is read only through `torch.load(weights_only=True)`.
Files are read whole through metalm_jax.storage and parsed from memory.
"""
from __future__ import annotations

import io
from typing import Dict, Mapping

import ml_dtypes
import numpy as np

from metalm_jax import storage

SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
TORCH_BIN = "pytorch_model.bin"


def read_config(model_dir: str) -> dict:
  path = storage.join(model_dir, "config.json")
  if not storage.exists(path):
    raise FileNotFoundError(f"model_dir={model_dir!r} has no config.json")
  return storage.read_json(path)


def _load_bin(path: str) -> Dict[str, np.ndarray]:
  import torch  # optional dependency (extra "hf")
  state = torch.load(io.BytesIO(storage.read_bytes(path)), map_location="cpu",
                     weights_only=True)
  return {k: v.detach().to(torch.float32).numpy() if v.is_floating_point() else v.numpy()
          for k, v in state.items()}


# safetensors dtype names -> numpy (little-endian, as the format stores them).
_ST_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": ml_dtypes.bfloat16,
              "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1", "U8": "u1", "BOOL": "?"}


def load_safetensors(path: str) -> Dict[str, np.ndarray]:
  """numpy arrays; bfloat16 tensors (numpy has no such dtype) come back as float32."""
  from safetensors import deserialize
  out = {}
  for name, t in deserialize(storage.read_bytes(path)):
    if t["dtype"] not in _ST_DTYPES:
      raise ValueError(f"{path}: tensor {name!r} has dtype {t['dtype']}; "
                       f"readable: {sorted(_ST_DTYPES)}")
    arr = np.frombuffer(bytes(t["data"]), dtype=_ST_DTYPES[t["dtype"]]).reshape(t["shape"])
    out[name] = arr.astype(np.float32) if t["dtype"] == "BF16" else arr
  return out


def read_weights(model_dir: str) -> Dict[str, np.ndarray]:
  """All tensors of the checkpoint as numpy arrays, by HF name."""
  single = storage.join(model_dir, SAFETENSORS)
  if storage.exists(single):
    return load_safetensors(single)
  index = storage.join(model_dir, SAFETENSORS_INDEX)
  if storage.exists(index):
    shards = sorted(set(storage.read_json(index)["weight_map"].values()))
    out: Dict[str, np.ndarray] = {}
    for shard in shards:
      out.update(load_safetensors(storage.join(model_dir, shard)))
    return out
  binary = storage.join(model_dir, TORCH_BIN)
  if storage.exists(binary):
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


def write_hf_dir(out_dir: str, config: Mapping, state_dict: Mapping[str, np.ndarray]) -> str:
  """Writes an HF model dir: config.json and model.safetensors (float32,
  contiguous; metadata format 'pt', as transformers writes it)."""
  from safetensors.numpy import save
  tensors = {k: np.ascontiguousarray(np.asarray(v, np.float32)) for k, v in state_dict.items()}
  storage.write_bytes(storage.join(out_dir, SAFETENSORS), save(tensors, metadata={"format": "pt"}))
  storage.write_json(storage.join(out_dir, "config.json"), dict(config))
  return out_dir
