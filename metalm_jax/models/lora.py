"""LoRA: low-rank adapters on the decoder's projections (Hu et al., 2021).

Config: the `model.decoder.lora` section (presets.decoder; off by default):

    enabled   bool
    rank      r >= 1
    alpha     the adapter's output is scaled by alpha / rank
    targets   projections that get an adapter, by module name (TARGETS):
              attention `query`, `key`, `value`, `out`; dense MLP `wi`, `wo`;
              gated MLP `wi_gate`, `wi_up`, `wo`
    dropout   dropout on the adapter's input (training only)
    init      A's initialiser (INITS: "peft" = HF PEFT's default, kaiming
              uniform with a = sqrt(5), i.e. U(-1/sqrt(fan_in), 1/sqrt(fan_in));
              "gaussian" = N(0, 1/rank)); B always starts at zero, so a fresh
              adapter changes nothing
    freeze    which non-adapter params LoRA freezes (FREEZE_SCOPES): "decoder"
              (its base weights; encoders and connectors follow
              optimizer.groups as without LoRA) or "all" (every param but the
              adapters); an explicit optimizer group still decides for its own
              params (train/state.py resolve_groups)

A projection y = x . W + b named in `targets` (layers.DenseND) holds two more
params next to its `kernel`:

    lora_a [in..., r]    logical axes: the kernel's input axes + `lora_rank`
    lora_b [r, out...]   logical axes: `lora_rank` + the kernel's output axes
    y = x . W + b + (alpha / r) * (dropout(x) . A) . B

so they shard like their base weight, the rank axis replicated (`lora_rank`
is in no rules table: an unmapped logical axis is replicated). In a scanned
stack they carry the leading `layers` axis like every layer param.

Export merges them (`merge`: W + (alpha / r) * A . B, adapters removed) or
keeps them apart (`split`); `fill_missing` gives a base checkpoint without
adapters fresh ones when it initialises a LoRA model.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict, Mapping, Optional, Tuple

import flax.linen as nn
import jax
import numpy as np

from metalm_jax.registry import Registry

RANK_AXIS = "lora_rank"
A_NAME, B_NAME = "lora_a", "lora_b"
# Matches a '/'-joined adapter param name (optimizer groups, logs).
ADAPTER_REGEX = rf"(^|/)({A_NAME}|{B_NAME})$"
ATTENTION_TARGETS = ("query", "key", "value", "out")
MLP_TARGETS = {"dense": ("wi", "wo"), "gated": ("wi_gate", "wi_up", "wo")}
# lora.freeze -> regex of the non-adapter params LoRA freezes (train/state.py).
FREEZE_SCOPES = {"decoder": r"^decoder/", "all": r""}


def targets_of(mlp: str) -> Tuple[str, ...]:
  """The projection names a decoder with MLP kind `mlp` can adapt."""
  return ATTENTION_TARGETS + MLP_TARGETS.get(mlp, ())


# lora.init -> (rank, n_in) -> initialiser of A [in..., rank] (B starts at zero).
INITS = Registry("lora init")


@INITS.register("peft")
def _peft_init(rank: int, n_in: int):
  del rank
  return nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform",
                                          in_axis=tuple(range(n_in)), out_axis=(n_in,))


@INITS.register("gaussian")
def _gaussian_init(rank: int, n_in: int):
  del n_in
  return nn.initializers.normal(1.0 / rank)


@dataclasses.dataclass(frozen=True)
class Lora:
  """The adapter settings a projection module reads (hashable: a module field)."""
  rank: int
  alpha: float
  targets: Tuple[str, ...]
  dropout: float = 0.0
  init: str = "peft"

  @property
  def scale(self) -> float:
    return self.alpha / self.rank

  def on(self, name: str) -> Optional["Lora"]:
    """Itself when projection `name` is adapted, else None."""
    return self if name in self.targets else None


def _get(section, name, default=None):
  return section.get(name, default) if section is not None else default


def enabled(section) -> bool:
  """True when a `lora` section is present and on."""
  return bool(section) and bool(_get(section, "enabled", False))


def check(decoder_section, field: str = "model.decoder") -> None:
  """Checks `<field>.lora` of a decoder section; errors name the field."""
  section = decoder_section.get("lora")
  if not section:
    return
  f = f"{field}.lora"
  def need(cond, name, why):
    if not cond:
      raise ValueError(f"{f}.{name}={_get(section, name)!r}: {why}")
  need(isinstance(_get(section, "enabled", False), bool), "enabled", "expected a bool")
  if not enabled(section):
    return
  rank = _get(section, "rank")
  need(isinstance(rank, int) and not isinstance(rank, bool) and rank >= 1, "rank",
       "must be an integer >= 1")
  alpha = _get(section, "alpha")
  need(isinstance(alpha, (int, float)) and math.isfinite(alpha) and alpha > 0, "alpha",
       "must be a finite number > 0 (the scale is alpha / rank)")
  dropout = _get(section, "dropout", 0.0)
  need(isinstance(dropout, (int, float)) and 0.0 <= dropout < 1.0, "dropout", "must be in [0, 1)")
  need(_get(section, "init", "peft") in INITS, "init", f"known: {list(INITS)}")
  need(_get(section, "freeze", "decoder") in FREEZE_SCOPES, "freeze",
       f"known: {sorted(FREEZE_SCOPES)}")
  targets = _get(section, "targets")
  known = targets_of(decoder_section.get("mlp", "dense"))
  need(isinstance(targets, (list, tuple)) and len(targets) > 0, "targets",
       f"a non-empty list of projection names from {list(known)}")
  unknown = [t for t in targets if t not in known]
  need(not unknown, "targets", f"{unknown} not projections of this decoder "
       f"(mlp={decoder_section.get('mlp', 'dense')!r}); known: {list(known)}")
  need(len(set(targets)) == len(targets), "targets", "names a projection twice")


def from_section(section) -> Optional[Lora]:
  """The module-side settings of a `lora` section; None when it is off."""
  if not enabled(section):
    return None
  return Lora(rank=int(section.rank), alpha=float(section.alpha),
              targets=tuple(section.targets), dropout=float(section.get("dropout", 0.0)),
              init=str(section.get("init", "peft")))


def delta(x, a, b, n_in: int, scale: float):
  """scale * (x . A) . B for x [..., in...] (its last n_in dims contracted),
  A [in..., r], B [r, out...]: the adapter's output [..., out...]."""
  h = jax.lax.dot_general(x, a, ((tuple(range(x.ndim - n_in, x.ndim)), tuple(range(n_in))),
                                 ((), ())))
  y = jax.lax.dot_general(h, b, (((h.ndim - 1,), (0,)), ((), ())))
  return y * scale


# ---- params trees (export, init) -----------------------------------------------
def _is_adapter_node(node) -> bool:
  return isinstance(node, Mapping) and A_NAME in node and B_NAME in node


def has_adapters(tree) -> bool:
  if not isinstance(tree, Mapping):
    return False
  return _is_adapter_node(tree) or any(has_adapters(v) for v in tree.values())


def count(tree) -> int:
  """Number of adapter params (lora_a / lora_b leaves) in a tree."""
  if not isinstance(tree, Mapping):
    return 0
  own = sum(1 for k in (A_NAME, B_NAME) if k in tree and not isinstance(tree[k], Mapping))
  return own + sum(count(v) for k, v in tree.items() if isinstance(v, Mapping))


def merged_kernel(kernel, a, b, scale: float) -> np.ndarray:
  """kernel + scale * A . B, computed in float64 and cast to the kernel's
  dtype. A stacked (scanned) layer has a leading layer axis on all three."""
  kernel, a, b = np.asarray(kernel), np.asarray(a, np.float64), np.asarray(b, np.float64)
  if a.ndim + b.ndim - 2 == kernel.ndim:
    d = np.tensordot(a, b, axes=1)
  elif a.ndim + b.ndim - 3 == kernel.ndim:
    d = np.stack([np.tensordot(a[i], b[i], axes=1) for i in range(a.shape[0])])
  else:
    raise ValueError(f"adapter shapes {a.shape} / {b.shape} do not fit kernel {kernel.shape}")
  if d.shape != kernel.shape:
    raise ValueError(f"adapter product {d.shape} != kernel {kernel.shape}")
  return (kernel.astype(np.float64) + scale * d).astype(kernel.dtype)


def merge(tree, scale: float) -> Dict[str, Any]:
  """`tree` with every adapted kernel replaced by W + scale * A . B (a numpy
  array of the kernel's dtype) and the adapters removed; other leaves as
  they are."""
  if not isinstance(tree, Mapping):
    return tree
  out = {k: merge(v, scale) for k, v in tree.items() if k not in (A_NAME, B_NAME)}
  if _is_adapter_node(tree):
    out["kernel"] = merged_kernel(tree["kernel"], tree[A_NAME], tree[B_NAME], scale)
  return out


def split(tree) -> Tuple[Dict[str, Any], Dict[str, Any]]:
  """(base, adapters): the tree without its lora_a / lora_b leaves, and a tree
  of only those (same nesting; empty subtrees dropped)."""
  base, adapters = {}, {}
  for k, v in tree.items():
    if isinstance(v, Mapping):
      b, a = split(v)
      base[k] = b
      if a:
        adapters[k] = a
    elif k in (A_NAME, B_NAME):
      adapters[k] = v
    else:
      base[k] = v
  return base, adapters


def union(base, adapters) -> Dict[str, Any]:
  """The inverse of `split`: `base` with the adapters' leaves added."""
  out = dict(base)
  for k, v in adapters.items():
    out[k] = union(out.get(k, {}), v) if isinstance(v, Mapping) else v
  return out


def fill_missing(loaded, fresh) -> Tuple[Dict[str, Any], int]:
  """A base without adapters (HF import, a checkpoint of a model without
  LoRA) made whole for a LoRA model: (loaded + fresh's adapters, how many
  were added). `loaded` with any adapter of its own is returned as it is
  (a partial set is then a name mismatch for the caller's check)."""
  if has_adapters(loaded):
    return loaded, 0
  _, adapters = split(fresh)
  return union(loaded, adapters), count(adapters)


def merged_section(decoder_section: Mapping[str, Any]) -> Dict[str, Any]:
  """A decoder section (dict) with LoRA switched off: the config of merged params."""
  out = dict(decoder_section)
  out["lora"] = {**dict(out.get("lora") or {}), "enabled": False}
  return out
