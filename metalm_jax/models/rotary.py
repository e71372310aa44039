"""Rotary position frequencies: the base `rope_theta` and optional scaling.

The rotation itself is `layers.apply_rotary` (rotate-half form, as HF Llama:
channel i of a head pairs with channel i + head_dim / 2; not interleaved).
Its inverse frequencies are inv_i = theta^(-i / half), i < half = head_dim / 2,
times a per-frequency factor from the scaling named by
`model.decoder.rope_scaling.rope_type` (empty dict or "default" = none).

"llama3" (Llama 3.1's context extension; fields `factor`, `low_freq_factor`,
`high_freq_factor`, `original_max_position_embeddings` = L): with wavelength
w_i = 2 pi / inv_i, frequencies with w_i < L / high_freq_factor are kept,
those with w_i > L / low_freq_factor divided by `factor`, and those between
interpolated: inv_i * ((1 - s) / factor + s) with
s = (L / w_i - low_freq_factor) / (high_freq_factor - low_freq_factor).
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Optional, Tuple

import numpy as np

from metalm_jax.registry import Registry

DEFAULT_THETA = 10000.0
# rope_type -> fn(inv_freq float64 [half], **fields) -> multiplier float64 [half].
ROPE_SCALINGS = Registry("rope_scaling rope_type")
# rope_type -> the fields it needs (all required).
SCALING_FIELDS = {}


def _scaling(name: str, fields: Tuple[str, ...]):
  def deco(fn):
    SCALING_FIELDS[name] = fields
    return ROPE_SCALINGS.register(name)(fn)
  return deco


@_scaling("llama3", ("factor", "low_freq_factor", "high_freq_factor",
                     "original_max_position_embeddings"))
def llama3(inv_freq: np.ndarray, *, factor: float, low_freq_factor: float,
           high_freq_factor: float, original_max_position_embeddings: int) -> np.ndarray:
  """Per-frequency multiplier of Llama 3.1 rope scaling (module docstring)."""
  old_len = float(original_max_position_embeddings)
  wavelen = 2 * math.pi / inv_freq
  smooth = (old_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
  mult = (1 - smooth) / factor + smooth
  mult = np.where(wavelen > old_len / low_freq_factor, 1.0 / factor, mult)
  return np.where(wavelen < old_len / high_freq_factor, 1.0, mult)


def _rope_type(scaling: Optional[Mapping[str, Any]]) -> str:
  return (scaling or {}).get("rope_type", "default")


def check(scaling: Optional[Mapping[str, Any]], field: str = "model.decoder.rope_scaling") -> None:
  """Raises naming the field for an unknown rope_type or missing / extra fields."""
  kind = _rope_type(scaling)
  if kind == "default":
    extra = sorted(set(scaling or {}) - {"rope_type"})
    if extra:
      raise ValueError(f"{field} has fields {extra} but rope_type='default' takes none")
    return
  if kind not in ROPE_SCALINGS:
    raise ValueError(f"{field}.rope_type={kind!r}; supported: ['default'] + {list(ROPE_SCALINGS)}")
  need = set(SCALING_FIELDS[kind])
  have = set(scaling) - {"rope_type"}
  if have != need:
    raise ValueError(f"{field} (rope_type={kind!r}) needs exactly the fields {sorted(need)}; "
                     f"missing {sorted(need - have)}, unknown {sorted(have - need)}")
  if kind == "llama3" and not scaling["high_freq_factor"] > scaling["low_freq_factor"]:
    raise ValueError(f"{field}.high_freq_factor={scaling['high_freq_factor']!r} must exceed "
                     f"low_freq_factor={scaling['low_freq_factor']!r}")


def base_frequencies(head_dim: int, theta: float = DEFAULT_THETA) -> np.ndarray:
  """float64 [head_dim // 2]: theta^(-i / half)."""
  half = head_dim // 2
  return 1.0 / theta ** (np.arange(half, dtype=np.float64) / half)


def frequency_scale(head_dim: int, theta: float,
                    scaling: Optional[Mapping[str, Any]]) -> Optional[Tuple[float, ...]]:
  """The multiplier of each inverse frequency (a hashable tuple, for module
  fields), or None without scaling."""
  check(scaling)
  kind = _rope_type(scaling)
  if kind == "default":
    return None
  fields = {k: v for k, v in scaling.items() if k != "rope_type"}
  mult = ROPE_SCALINGS.get(kind)(base_frequencies(head_dim, theta), **fields)
  return tuple(float(m) for m in mult)


def inverse_frequencies(head_dim: int, theta: float = DEFAULT_THETA,
                        scaling: Optional[Mapping[str, Any]] = None) -> np.ndarray:
  """float64 [head_dim // 2]: the scaled inverse frequencies (for checks)."""
  scale = frequency_scale(head_dim, theta, scaling)
  base = base_frequencies(head_dim, theta)
  return base if scale is None else base * np.asarray(scale)
