"""The batch contract: the one dict of arrays the pipeline writes, the model
reads and the evaluators build.

Every array has a leading batch dimension B and a static shape. L is the
decoder sequence length.

    tokens       int32   [B, L]  decoder input ids. At docked positions the id
                                 is ignored by the model (its embedding is
                                 replaced); pipelines write the original text
                                 token there, or PAD for image positions.
    targets      int32   [B, L]  targets[b, t] is the token position t predicts.
    loss_mask    float32 [B, L]  1.0 where targets[b, t] is trained, else 0.0.
                                 Never 1.0 where targets[b, t] lies inside a
                                 non-causal span (it was seen through an encoder).
    segment_ids  int32   [B, L]  packed-sequence id (1, 2, ...); 0 is padding.
                                 Attention never crosses segments.
    positions    int32   [B, L]  position inside the segment (0-based).
    dock_index   int32   [B, L]  index into the flattened encoder outputs of
                                 the same example (0 where not docked).
    dock_mask    bool    [B, L]  True where the decoder input embedding is
                                 replaced by encoder output dock_index[b, t].
    encoders     dict            one entry per configured encoder name: the
                                 arrays of its modality's record
                                 (models/modalities/, `inputs`):
        image "vit":  pixels float32 [B, N, H, W, 3] (normalised), valid bool [B, N]
        text "bert":  tokens int32 [B, N, S], mask bool [B, N, S] (True = real token)
        audio "whisper": waveform float32 [B, N, S] (mono, cfg.sample_rate Hz,
                     S = max_seconds * sample_rate, zero-padded), valid bool [B, N]
        video "video": frames float32 [B, N, F, H, W, 3] (normalised like image
                     pixels, F = cfg.frames), valid bool [B, N]

Flattened encoder outputs. Each encoder `name` with N = max_items items of T
vectors each (T = `slot_length(cfg)`) yields N*T vectors, item-major. The
encoders are concatenated in sorted name order, so the vector for item n,
element j of encoder `name` is at `dock_offsets(cfg)[name] + n*T + j`.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

# The shapes live with the model (metalm_jax/models/contract.py); the
# per-encoder arrays come from each modality's record (models/modalities/).
from metalm_jax.models.contract import (DECODER_DTYPES, DECODER_KEYS, batch_spec,  # noqa: F401
                                        dock_offsets, dummy_batch, encoder_inputs,
                                        num_dock_vectors)
from metalm_jax.models.modalities import slot_length  # noqa: F401


def validate_batch(batch: Mapping[str, Any], model_cfg, vocab_size: int) -> None:
  """Checks the contract's invariants on host arrays; raises ValueError naming
  the field and the offending value."""
  b, l = np.shape(batch["tokens"])
  expected = batch_spec(model_cfg, b, l)

  def check(key, arr, shape, dtype):
    arr = np.asarray(arr)
    if arr.shape != tuple(shape):
      raise ValueError(f"batch[{key!r}] has shape {arr.shape}, expected {shape}")
    if arr.dtype != np.dtype(dtype):
      raise ValueError(f"batch[{key!r}] has dtype {arr.dtype}, expected {np.dtype(dtype)}")

  for k in DECODER_KEYS:
    check(k, batch[k], *expected[k])
  for name, spec in expected["encoders"].items():
    for k, (shape, dtype) in spec.items():
      check(f"encoders/{name}/{k}", batch["encoders"][name][k], shape, dtype)

  for k in ("tokens", "targets"):
    arr = np.asarray(batch[k])
    bad = (arr < 0) | (arr >= vocab_size)
    if bad.any():
      raise ValueError(f"batch[{k!r}] has id {arr[bad][0]} outside vocab_size={vocab_size}")

  seg = np.asarray(batch["segment_ids"])
  dmask = np.asarray(batch["dock_mask"])
  didx = np.asarray(batch["dock_index"])
  lmask = np.asarray(batch["loss_mask"]) > 0
  n_vec = num_dock_vectors(model_cfg.encoders)
  if dmask.any() and (didx[dmask].min() < 0 or didx[dmask].max() >= n_vec):
    raise ValueError(f"batch['dock_index'] out of range [0, {n_vec})")
  if (dmask & (seg == 0)).any():
    raise ValueError("batch['dock_mask'] is set on a padding position")
  if (lmask & (seg == 0)).any():
    raise ValueError("batch['loss_mask'] is set on a padding position")
  # A trained target must not be a docked position of the same segment
  # (that token was seen through an encoder): target of t is the input at t+1.
  nxt_docked = np.zeros_like(dmask)
  nxt_docked[:, :-1] = dmask[:, 1:] & (seg[:, 1:] == seg[:, :-1])
  if (lmask & nxt_docked).any():
    bi, ti = np.argwhere(lmask & nxt_docked)[0]
    raise ValueError(f"batch['loss_mask'][{bi}, {ti}] trains a target inside a span")
  # Docked encoder items must be valid items.
  offsets = dock_offsets(model_cfg.encoders)
  for name, cfg in model_cfg.encoders.items():
    t = slot_length(cfg)
    lo, hi = offsets[name], offsets[name] + cfg.max_items * t
    sel = dmask & (didx >= lo) & (didx < hi)
    if not sel.any():
      continue
    items = (didx - lo) // t
    enc = batch["encoders"][name]
    if "valid" in enc:  # whole items (images, clips)
      ok = np.take_along_axis(np.asarray(enc["valid"]), np.where(sel, items, 0), axis=1)
    else:
      m = np.asarray(enc["mask"])  # [B, N, S]
      j = (didx - lo) % t
      ok = m[np.arange(b)[:, None], np.where(sel, items, 0), np.where(sel, j, 0)]
    if (sel & ~ok).any():
      raise ValueError(f"batch['dock_index'] points at padding of encoder {name!r}")
