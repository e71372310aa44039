"""The batch contract's shapes, as the model needs them (the contract itself
is described in metalm_jax/batch.py, which re-exports these): decoder keys and
dtypes, per-encoder inputs from each modality's record, and where each
encoder's vectors sit in the flattened dock."""
from __future__ import annotations

from typing import Any, Dict, Mapping

import numpy as np

from metalm_jax.models.modalities import by_encoder_type, slot_length

DECODER_KEYS = ("tokens", "targets", "loss_mask", "segment_ids", "positions",
                "dock_index", "dock_mask")
DECODER_DTYPES = {"tokens": np.int32, "targets": np.int32, "loss_mask": np.float32,
                  "segment_ids": np.int32, "positions": np.int32,
                  "dock_index": np.int32, "dock_mask": np.bool_}


def encoder_inputs(enc_cfg, batch_size: int) -> Dict[str, Any]:
  """{array: (shape, dtype)} of one encoder's inputs (its modality's record)."""
  return by_encoder_type(enc_cfg.type).inputs(enc_cfg, batch_size)


def dock_offsets(encoders_cfg: Mapping[str, Any]) -> Dict[str, int]:
  """Offset of each encoder's block in the flattened encoder outputs."""
  offsets, total = {}, 0
  for name in sorted(encoders_cfg):
    offsets[name] = total
    cfg = encoders_cfg[name]
    total += cfg.max_items * slot_length(cfg)
  return offsets


def num_dock_vectors(encoders_cfg: Mapping[str, Any]) -> int:
  return sum(c.max_items * slot_length(c) for c in encoders_cfg.values())


def batch_spec(model_cfg, batch_size: int, seq_len: int) -> Dict[str, Any]:
  """{key: (shape, dtype)} for a batch (nested for `encoders`)."""
  spec = {k: ((batch_size, seq_len), DECODER_DTYPES[k]) for k in DECODER_KEYS}
  spec["encoders"] = {name: encoder_inputs(c, batch_size)
                      for name, c in sorted(model_cfg.encoders.items())}
  return spec


def _map_spec(fn, spec):
  if isinstance(spec, dict):
    return {k: _map_spec(fn, v) for k, v in spec.items()}
  return fn(*spec)


def dummy_batch(model_cfg, batch_size: int, seq_len: int) -> Dict[str, Any]:
  """A batch of zeros with the contract's shapes: nothing docked, all padding."""
  return _map_spec(lambda shape, dtype: np.zeros(shape, dtype),
                   batch_spec(model_cfg, batch_size, seq_len))
