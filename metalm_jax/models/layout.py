"""Params layouts of a layer stack, and conversion between them.

Unrolled: one subtree per layer, `layers_0` ... `layers_{n-1}`.
Scanned:  one subtree `layers` whose leaves carry a leading layer axis of
          size n (what nn.scan makes; see metalm_jax/models/stack.py).

`stack` / `unstack` convert every stack in a tree; `match` converts a tree
to the layout of another (e.g. loaded params to the model's). Leaves may be
numpy arrays, jax Arrays or jax.ShapeDtypeStructs (a NamedSharding gains or
loses a replicated leading dim). HF import/export, init_from and
init_components use these, so either layout reads and writes either.
"""
from __future__ import annotations

import re
from typing import Any, List, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

STACKED = "layers"
_UNROLLED = re.compile(r"^layers_(\d+)$")


def _layer_indices(node: Mapping[str, Any]) -> List[int]:
  return sorted(int(m.group(1)) for m in map(_UNROLLED.match, node) if m)


def _is_stacked(node) -> bool:
  return isinstance(node, Mapping) and isinstance(node.get(STACKED), Mapping)


def _stack_leaves(*xs):
  x0 = xs[0]
  if isinstance(x0, jax.ShapeDtypeStruct):
    sh = x0.sharding
    if isinstance(sh, NamedSharding):
      sh = NamedSharding(sh.mesh, PartitionSpec(None, *sh.spec))
    return jax.ShapeDtypeStruct((len(xs),) + tuple(x0.shape), x0.dtype, sharding=sh)
  if all(isinstance(x, (np.ndarray, np.generic)) for x in xs):
    return np.stack(xs)
  return jnp.stack(xs)


def _take_leaf(x, i: int):
  if isinstance(x, jax.ShapeDtypeStruct):
    sh = x.sharding
    if isinstance(sh, NamedSharding):
      spec = tuple(sh.spec) + (None,) * (len(x.shape) - len(sh.spec))
      sh = NamedSharding(sh.mesh, PartitionSpec(*spec[1:]))
    return jax.ShapeDtypeStruct(tuple(x.shape[1:]), x.dtype, sharding=sh)
  return x[i]


def num_layers(stacked_subtree) -> int:
  """The leading (layer) dim shared by every leaf of a `layers` subtree."""
  sizes = {int(np.shape(x)[0]) if not isinstance(x, jax.ShapeDtypeStruct) else int(x.shape[0])
           for x in jax.tree.leaves(stacked_subtree)}
  if len(sizes) != 1:
    raise ValueError(f"stacked '{STACKED}' params disagree on the layer count: {sorted(sizes)}")
  return sizes.pop()


def _stack_node(node: Mapping[str, Any], where: str) -> dict:
  idx = _layer_indices(node)
  if not idx:
    return dict(node)
  if idx != list(range(len(idx))):
    raise ValueError(f"{where}: layers {idx} are not numbered 0..{len(idx) - 1}")
  if STACKED in node:
    raise ValueError(f"{where}: holds both '{STACKED}' and 'layers_<i>' subtrees")
  out = {k: v for k, v in node.items() if not _UNROLLED.match(k)}
  subtrees = [node[f"layers_{i}"] for i in idx]
  structs = {jax.tree.structure(t) for t in subtrees}
  if len(structs) != 1:
    raise ValueError(f"{where}: layers_<i> subtrees differ in structure; cannot stack")
  out[STACKED] = jax.tree.map(_stack_leaves, *subtrees)
  return out


def _unstack_node(node: Mapping[str, Any], where: str) -> dict:
  if not _is_stacked(node):
    return dict(node)
  if _layer_indices(node):
    raise ValueError(f"{where}: holds both '{STACKED}' and 'layers_<i>' subtrees")
  out = {k: v for k, v in node.items() if k != STACKED}
  sub = node[STACKED]
  for i in range(num_layers(sub)):
    out[f"layers_{i}"] = jax.tree.map(lambda x, i=i: _take_leaf(x, i), sub)
  return out


def _walk(tree, node_fn, where=""):
  if not isinstance(tree, Mapping):
    return tree
  node = node_fn(tree, where or "params")
  return {k: _walk(v, node_fn, f"{where}/{k}" if where else k) for k, v in node.items()}


def stack(tree):
  """Every `layers_0..layers_{n-1}` group -> one `layers` subtree (axis 0 = layer)."""
  return _walk(tree, _stack_node)


def unstack(tree):
  """Every `layers` subtree -> `layers_0..layers_{n-1}`."""
  return _walk(tree, _unstack_node)


def match(tree, like, where: str = ""):
  """`tree` converted, stack by stack, to the layout `like` has (a params
  tree or its abstract shapes). Parts that do not correspond are left as they
  are, for the caller's name/shape check to report."""
  if not isinstance(tree, Mapping) or not isinstance(like, Mapping):
    return tree
  here = where or "params"
  if _is_stacked(like) and _layer_indices(tree) and STACKED not in tree:
    tree = _stack_node(tree, here)
  elif _layer_indices(like) and _is_stacked(tree):
    tree = _unstack_node(tree, here)
  return {k: match(v, like.get(k), f"{where}/{k}" if where else k) if k in like else v
          for k, v in tree.items()}


def path_str(path) -> str:
  """'decoder/layers_0/attn/query/kernel' from a pytree key path (boxes skipped)."""
  parts = []
  for k in path:
    if isinstance(k, jax.tree_util.DictKey):
      parts.append(str(k.key))
    elif isinstance(k, jax.tree_util.SequenceKey):
      parts.append(str(k.idx))
    # GetAttrKey('value') of a LogicallyPartitioned box adds nothing.
  return "/".join(parts)


def is_stacked_name(name: str) -> bool:
  """True for a '/'-joined param name inside a scanned stack."""
  return STACKED in name.split("/")


def slice_names(name: str, n: int) -> List[str]:
  """'enc/layers/attn/kernel' -> ['enc/layers_0/attn/kernel', ...]: the
  unrolled name of each layer's slice (regexes written for the unrolled
  layout, e.g. optimizer groups, apply to them)."""
  parts = name.split("/")
  at = parts.index(STACKED)
  return ["/".join(parts[:at] + [f"layers_{i}"] + parts[at + 1:]) for i in range(n)]
