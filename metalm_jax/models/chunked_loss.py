"""The masked cross-entropy over position chunks, without full logits.

`loss_sums` (models/loss.py) takes float32 logits [B, L, V]; at a large
vocabulary they dominate the step's memory (and the backward keeps them).
`chunked_loss_sums` takes the decoder's final hidden states [B, L, D] and the
output head instead, and scans over chunks of `chunk` positions: per chunk it
computes the logits [B, chunk, V] in the head's (compute) dtype, their
logsumexp and target logit in float32, the argmax, and adds the weighted
sums. The scan body is rematerialised (`jax.checkpoint`), so the backward
recomputes one chunk's logits at a time instead of keeping all of them: it
costs one more head matmul than the plain path, and holds O(B x chunk x V).
"""
from __future__ import annotations

from typing import Callable, Tuple

import jax
import jax.numpy as jnp


def _pad_positions(x, pad: int):
  """x [B, L, ...] padded with zeros to [B, L + pad, ...]."""
  if not pad:
    return x
  return jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))


def _chunks(x, chunk: int):
  """[B, n * chunk, ...] -> [n, B, chunk, ...] (the scan's leading axis)."""
  b, l = x.shape[:2]
  return jnp.swapaxes(x.reshape((b, l // chunk, chunk) + x.shape[2:]), 0, 1)


def chunked_loss_sums(head: Callable, hidden, targets, weights,
                      chunk: int) -> Tuple[jax.Array, jax.Array, jax.Array]:
  """(sum of weighted CE, sum of weighted correct, sum of weights), float32,
  as `loss_sums(head(hidden), targets, weights)` returns them.

  head: hidden [B, c, D] -> logits [B, c, V] (any float dtype; the
  logsumexp is taken in float32). chunk: positions per chunk, >= 1; a length
  that it does not divide is padded with positions of weight 0.
  """
  if chunk < 1:
    raise ValueError(f"chunk={chunk}: positions per chunk must be >= 1")
  length = hidden.shape[1]
  chunk = min(chunk, length)
  pad = -length % chunk
  xs = tuple(_chunks(_pad_positions(x, pad), chunk)
             for x in (hidden, targets, weights.astype(jnp.float32)))

  @jax.checkpoint
  def body(carry, x):
    h, t, w = x
    logits = head(h)
    f32 = logits.astype(jnp.float32)
    lse = jax.nn.logsumexp(f32, axis=-1)
    target_logit = jnp.take_along_axis(f32, t[..., None], axis=-1)[..., 0]
    correct = (jnp.argmax(logits, axis=-1) == t).astype(jnp.float32)
    s, c, n = carry
    return (s + jnp.sum((lse - target_logit) * w), c + jnp.sum(correct * w), n + jnp.sum(w)), None

  zero = jnp.zeros((), jnp.float32)
  (s, c, n), _ = jax.lax.scan(body, (zero, zero, zero), xs)
  return s, c, n
