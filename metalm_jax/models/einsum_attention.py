"""Attention as XLA einsums laid out for XLA:CPU: `attention_impl=einsum`,
what `auto` picks on CPU.

The arithmetic of `jax.nn.dot_product_attention(implementation="xla")`:
float32 logits scaled after the product, masked positions set to
-0.7 * max, a float32 softmax, probabilities cast to the value dtype. Two
differences in form. Where each kv head serves one query head the products
are plain 4-D einsums (the library vmaps a 5-D grouped form over the group
axis, which XLA:CPU compiles, forward and backward, with more transposing
copies: tests/test_attention.py counts them). And the output is computed
transposed, O^T = V^T P^T, then transposed back to [B, T, N, D]: in an
interleaved timing of the attention alone (bench shapes) a little faster
than the plain P V. The bench train step with this form against the
library's: docs/performance.md ("The train step on CPU"). Values and
gradients agree with the library's within float32 rounding (same test file).

Grouped-query attention: N query heads over K key/value heads, query head n
reading kv head n // (N / K) (HF's repeat_kv), without repeating keys or
values: queries are viewed [B, T, K, N/K, D].
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def _large_negative(dtype):
  """The library's masked value: -0.7 x the dtype's max, capped at float32's
  (so it stays finite when the float64 logits' softmax runs in float32)."""
  top = min(float(jnp.finfo(dtype).max), float(jnp.finfo(jnp.float32).max))
  return jnp.asarray(-0.7 * top, dtype)


def attention(q, k, v, allowed, causal: bool):
  """q [B, T, N, D], k / v [B, S, K, D], `allowed` a bool mask broadcastable
  to [B, 1, T, S] (True = may attend) or None; `causal`: keys at or before
  the query's position. Returns [B, T, N, D]."""
  b, t, n, d = q.shape
  s, kv_heads = k.shape[1], k.shape[2]
  if causal:
    tri = jnp.tril(jnp.ones((t, s), bool))
    allowed = tri if allowed is None else jnp.logical_and(allowed, tri)
  groups = n // kv_heads
  # One query head per kv head: plain 4-D products (a unit group axis makes
  # XLA:CPU canonicalise them with extra transposes).
  q_spec, p_spec = ("btkd", "bkts") if groups == 1 else ("btkgd", "bkgts")
  qg = q if groups == 1 else q.reshape(b, t, kv_heads, groups, d)
  logits = jnp.einsum(f"{q_spec},bskd->{p_spec}", qg, k, preferred_element_type=jnp.float32)
  logits = logits * np.float32(1.0 / np.sqrt(d))
  if allowed is not None:
    allowed = jnp.broadcast_to(allowed, (b, 1, t, s))
    if groups > 1:
      allowed = allowed[:, :, None]  # [B, 1, 1, T, S]
    logits = jnp.where(allowed, logits, _large_negative(logits.dtype))
  probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
  out_spec = p_spec[:-2] + "dt"  # [B, K(, G), D, T]
  out_t = jnp.einsum(f"bskd,{p_spec}->{out_spec}", v, probs)
  perm = (0, 3, 1, 2) if groups == 1 else (0, 4, 1, 2, 3)
  return out_t.transpose(perm).reshape(b, t, n, d)
