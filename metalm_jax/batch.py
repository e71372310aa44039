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
    encoders     dict            one entry per configured encoder name:
        type "vit":  pixels float32 [B, N, H, W, 3] (normalised), valid bool [B, N]
        type "bert": tokens int32 [B, N, S], mask bool [B, N, S] (True = real token)
        type "whisper": waveform float32 [B, N, S] (mono, cfg.sample_rate Hz,
                     S = max_seconds * sample_rate, zero-padded), valid bool [B, N]
        type "video": frames float32 [B, N, F, H, W, 3] (normalised like "vit"
                     pixels, F = cfg.frames), valid bool [B, N]

Flattened encoder outputs. Each encoder `name` with N = max_items items of T
vectors each (T = `slot_length(cfg)`) yields N*T vectors, item-major. The
encoders are concatenated in sorted name order, so the vector for item n,
element j of encoder `name` is at `dock_offsets(cfg)[name] + n*T + j`.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Tuple

import numpy as np

from metalm_jax.registry import Registry

# Per encoder type: (slot_length(enc_cfg) -> T, input_spec(enc_cfg, B) -> {key: (shape, dtype)}).
MODALITIES = Registry("encoder modality")

DECODER_KEYS = ("tokens", "targets", "loss_mask", "segment_ids", "positions",
                "dock_index", "dock_mask")
DECODER_DTYPES = {"tokens": np.int32, "targets": np.int32, "loss_mask": np.float32,
                  "segment_ids": np.int32, "positions": np.int32,
                  "dock_index": np.int32, "dock_mask": np.bool_}


def _vit_slot_length(cfg) -> int:
  if cfg.image_size % cfg.patch_size:
    raise ValueError(f"image_size={cfg.image_size} is not a multiple of "
                     f"patch_size={cfg.patch_size}")
  return (cfg.image_size // cfg.patch_size) ** 2 + int(cfg.class_token)


def _vit_inputs(cfg, b):
  n, s = cfg.max_items, cfg.image_size
  return {"pixels": ((b, n, s, s, 3), np.float32), "valid": ((b, n), np.bool_)}


def _bert_slot_length(cfg) -> int:
  return cfg.max_len


def _bert_inputs(cfg, b):
  shape = (b, cfg.max_items, cfg.max_len)
  return {"tokens": (shape, np.int32), "mask": (shape, np.bool_)}


def _num_vectors(cfg) -> int:
  """Audio and video dock a configured number of vectors per clip."""
  if cfg.num_vectors < 1:
    raise ValueError(f"{cfg.type} encoder num_vectors={cfg.num_vectors} must be >= 1")
  return cfg.num_vectors


def _whisper_inputs(cfg, b):
  samples = int(round(cfg.max_seconds * cfg.sample_rate))
  return {"waveform": ((b, cfg.max_items, samples), np.float32),
          "valid": ((b, cfg.max_items), np.bool_)}


def _video_inputs(cfg, b):
  n, f, s = cfg.max_items, cfg.frames, cfg.image_size
  return {"frames": ((b, n, f, s, s, 3), np.float32), "valid": ((b, n), np.bool_)}


MODALITIES.register("vit")((_vit_slot_length, _vit_inputs))
MODALITIES.register("bert")((_bert_slot_length, _bert_inputs))
MODALITIES.register("whisper")((_num_vectors, _whisper_inputs))
MODALITIES.register("video")((_num_vectors, _video_inputs))


def slot_length(enc_cfg) -> int:
  """Vectors one item of this encoder docks (T)."""
  return MODALITIES.get(enc_cfg.type)[0](enc_cfg)


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
  spec["encoders"] = {
      name: MODALITIES.get(c.type)[1](c, batch_size)
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
