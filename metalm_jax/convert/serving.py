"""The serving function: next-token logits for a contract batch (docked
images, sound clips, videos and encoded text allowed). Shared by the
exporter and the Predictor; imports no training code."""
from __future__ import annotations

from typing import Any, Dict, Mapping

import jax
import jax.numpy as jnp
from metalm_jax import storage

SERVING_KEYS = ("tokens", "segment_ids", "positions", "dock_index", "dock_mask")


def serving_batch(batch: Mapping[str, Any]) -> Dict[str, Any]:
  """The part of a contract batch the serving function reads."""
  return {**{k: batch[k] for k in SERVING_KEYS}, "encoders": batch["encoders"]}


def next_token_logits(model, params, batch):
  """float32 [B, vocab]: logits at each row's last real position
  (segment_ids > 0; left or right padding)."""
  logits = model.apply({"params": params}, batch)
  seg = batch["segment_ids"]
  last = jnp.max(jnp.where(seg > 0, jnp.arange(seg.shape[1])[None, :], 0), axis=1)
  return jnp.take_along_axis(logits, last[:, None, None], axis=1)[:, 0]


def load_serving(path: str) -> jax.export.Exported:
  """Deserialises an exported serving function; call it as
  `exported.call(params, serving_batch(batch))`."""
  return jax.export.deserialize(bytearray(storage.read_bytes(path)))
