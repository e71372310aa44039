"""Digests that a checkpoint carries of what it holds, checked on restore, so
that a flipped bit or an edited file is never restored silently.

- Arrays (the `state` item): a 64-bit fingerprint per array, computed on the
  devices from the array's bits before the save and again from the restored
  array. Each element's bits (as uint32 words) are mixed with a hash of its
  flat index by a bijective mixer (murmur3's finaliser) and the results are
  summed modulo 2**32, twice with different seeds. Integer sums wrap exactly
  in any order, so the fingerprint does not depend on the mesh or the
  shardings (a checkpoint restores onto another mesh), and any change of one
  element changes it (the mixer is a bijection); several changes go unseen
  with probability ~2**-64. Nothing is read back from storage, on gs:// too.
- The data-iterator state (one JSON file per process): written wrapped as
  {"iterator_state": <the state>, "sha256": <digest of its canonical JSON>}
  and checked before the iterator is moved there.
- The `counters` item: sha256 of its canonical JSON, kept with the arrays'.

Checkpoints written before digests existed restore unchecked, with a logged
note (train/checkpoint.py).
"""
from __future__ import annotations

import hashlib
import json
from typing import Any, Dict, List, Mapping, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

FORMAT = 1
ITER_KEY, ITER_DIGEST = "iterator_state", "sha256"
_SEEDS = (0x9E3779B9, 0x7F4A7C15)


class DigestMismatch(ValueError):
  """Stored data differs from what its digest says was saved."""


def _mix32(h):
  """murmur3's 32-bit finaliser: a bijection of uint32."""
  h = h ^ (h >> 16)
  h = h * jnp.uint32(0x85EBCA6B)
  h = h ^ (h >> 13)
  h = h * jnp.uint32(0xC2B2AE35)
  return h ^ (h >> 16)


def _words(x):
  """The array's bits as uint32 words (8-byte elements: a trailing axis of 2)."""
  if x.dtype == jnp.bool_:
    return x.astype(jnp.uint32)
  size = jnp.dtype(x.dtype).itemsize
  if size == 4:
    return jax.lax.bitcast_convert_type(x, jnp.uint32)
  if size == 8:
    return jax.lax.bitcast_convert_type(x, jnp.uint32)
  unsigned = {1: jnp.uint8, 2: jnp.uint16}[size]
  return jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)


def _flat_index(shape):
  """Each element's row-major flat index (mod 2**32), built from iotas so the
  array keeps its sharding (no reshape)."""
  idx = jnp.zeros(shape, jnp.uint32)
  stride = 1
  for d in reversed(range(len(shape))):
    idx = idx + jax.lax.broadcasted_iota(jnp.uint32, shape, d) * jnp.uint32(stride % 2 ** 32)
    stride *= shape[d]
  return idx


def _fingerprint(x):
  w = _words(x)
  idx = _flat_index(w.shape)
  return jnp.stack([jnp.sum(_mix32(w + _mix32(idx ^ jnp.uint32(s))), dtype=jnp.uint32)
                    for s in _SEEDS])


@jax.jit
def _fingerprints(leaves):
  return [_fingerprint(x) for x in leaves]


def _named_leaves(tree) -> List[Tuple[str, Any]]:
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  return [(jax.tree_util.keystr(p, simple=True, separator="/"), x) for p, x in flat]


def array_digests(tree) -> Dict[str, str]:
  """{'params/decoder/...': 16 hex digits} for every array of `tree`."""
  named = _named_leaves(tree)
  if not named:
    return {}
  prints = _fingerprints([jnp.asarray(x) if not isinstance(x, jax.Array) else x
                          for _, x in named])
  # A full reduction is replicated: every process reads its own copy.
  host = [np.asarray(p.addressable_data(0) if isinstance(p, jax.Array) else p) for p in prints]
  return {n: "".join(f"{int(v):08x}" for v in h) for (n, _), h in zip(named, host)}


def check_arrays(saved: Mapping[str, str], tree) -> None:
  """Raises DigestMismatch naming the first array whose digest differs (or is
  missing on either side)."""
  got = array_digests(tree)
  for name in sorted(set(saved) | set(got)):
    a, b = saved.get(name), got.get(name)
    if a != b:
      raise DigestMismatch(f"array {name}: digest {b} != {a} saved with the step")


def json_digest(obj: Any) -> str:
  """sha256 of the canonical JSON of `obj`."""
  text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
  return hashlib.sha256(text.encode()).hexdigest()


def wrap_iterator_state(state: Any) -> bytes:
  """The data-iterator file's content: the state (a JSON value) and its digest."""
  return json.dumps({ITER_KEY: state, ITER_DIGEST: json_digest(state)}, indent=1).encode()


def unwrap_iterator_state(text: bytes) -> Tuple[Any, bool]:
  """(state, checked): the state of a wrapped file after checking its digest
  (raises DigestMismatch), or an older file's state as it is (checked=False)."""
  obj = json.loads(text.decode() if isinstance(text, bytes) else text)
  if not (isinstance(obj, dict) and set(obj) == {ITER_KEY, ITER_DIGEST}):
    return obj, False
  got = json_digest(obj[ITER_KEY])
  if got != obj[ITER_DIGEST]:
    raise DigestMismatch(f"data-iterator state: digest {got} != {obj[ITER_DIGEST]} saved with it")
  return obj[ITER_KEY], True


def for_save(state, counters: Mapping[str, int]) -> Dict[str, Any]:
  """The `digests` item of a step: arrays of the state and the counters."""
  return {"format": FORMAT, "arrays": array_digests(state), "counters": json_digest(counters)}


def check_counters(saved: Optional[Mapping[str, Any]], counters: Mapping[str, int]) -> None:
  want = (saved or {}).get("counters")
  if want is not None and json_digest(counters) != want:
    raise DigestMismatch(f"counters {dict(counters)}: digest differs from the one saved")
