"""Pallas splash attention (TPU flash attention) for `attention_impl=splash`.

`jax.experimental.pallas.ops.tpu.splash_attention` (jax 0.10.2) computes
softmax(q k^T / sqrt(D)) v block by block in VMEM, so no [B, H, Q, K] score
tensor exists in HBM, forward or backward (its own custom VJP). The static
mask is causal (decoder) or full (encoders); packing segments and key padding
come as per-position segment ids (`layers.Segments`): query t may see key s
iff their ids are equal. A dense bool mask (the KV cache of decode mode)
cannot be expressed this way, so such calls stay on XLA.

Constraints: query and key lengths multiples of 128 (the kernel's lane block;
blocks of 512, 256 or 128 positions, the largest dividing the length). Head
dims 16, 64 and 100 compiled for v5e in float32 and bfloat16, so none is
imposed. Grouped-query keys/values are read by the kernel directly (query head
n reads kv head n // (N / K)).

Under a mesh (`jax.set_mesh`, the trainer's), the kernel runs per shard in
`jax.shard_map`: batch and heads split as the logical rules map `act_batch`
and `act_heads`, sequence and head_dim whole (a Pallas call cannot be
partitioned by XLA). Off TPU (CPU tests) the same kernel runs in the Pallas
interpreter; the target platform is the mesh's (so an AOT compile for a TPU
topology from a CPU host gets the real kernel).
"""
from __future__ import annotations

import functools
import math
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu import splash_attention as sa

Array = jax.Array
LANES = 128
BLOCKS = (512, 256, 128)  # tried in order; the first dividing the length is used


def unfit_reason(q_len: int, kv_len: int, dense_mask: bool) -> str:
  """Why splash cannot run this call ('' when it can)."""
  if dense_mask:
    return "the mask is a dense bool array (the decode-mode KV cache's), not segment ids"
  for name, n in (("query", q_len), ("key", kv_len)):
    if n <= 0 or n % LANES:
      return f"{name} length {n} is not a multiple of {LANES}"
  return ""


def block_size(n: int) -> int:
  return next(b for b in BLOCKS if n % b == 0)


def target_platform() -> str:
  """The platform being compiled for: the current mesh's devices (an AOT
  topology's TPUs from a CPU host), else the default backend."""
  device = jax.sharding.get_abstract_mesh().abstract_device
  return device.platform if device is not None else jax.default_backend()


def _kernel(num_heads: int, q_len: int, kv_len: int, causal: bool, interpret: bool):
  shape = (q_len, kv_len)
  mask = sa.CausalMask(shape) if causal else sa.FullMask(shape)
  bq, bkv = block_size(q_len), block_size(kv_len)
  blocks = sa.BlockSizes(block_q=bq, block_kv=bkv, block_kv_compute=bkv,
                         block_q_dkv=bq, block_kv_dkv=bkv, block_kv_dkv_compute=bkv,
                         block_q_dq=bq, block_kv_dq=bkv)
  return sa.make_splash_mha(sa.MultiHeadMask([mask] * num_heads), block_sizes=blocks,
                            head_shards=1, q_seq_shards=1, interpret=interpret)


def _local_attention(q, k, v, q_seg, kv_seg, *, causal: bool, interpret: bool):
  """q [b, Q, N, D], k/v [b, K, Nk, D], segment ids [b, Q] / [b, K] or None."""
  kernel = _kernel(q.shape[2], q.shape[1], k.shape[1], causal, interpret)
  heads_first = lambda x: jnp.swapaxes(x, 1, 2)
  q = q * jnp.asarray(1.0 / math.sqrt(q.shape[-1]), q.dtype)
  q, k, v = heads_first(q), heads_first(k), heads_first(v)
  if q_seg is None:
    out = jax.vmap(kernel)(q, k, v)
  else:
    out = jax.vmap(lambda q, k, v, s, t: kernel(q, k, v, sa.SegmentIds(s, t)))(
        q, k, v, q_seg, kv_seg)
  return heads_first(out)


def _spec(axes):
  """Mesh PartitionSpec of logical activation `axes` [batch, length, heads,
  head_dim] under the current rules, with length and head_dim whole."""
  spec = nn.logical_to_mesh_axes(axes)
  return jax.sharding.PartitionSpec(spec[0], None, spec[2], None)


def attention(q: Array, k: Array, v: Array, segments: Optional[Any], causal: bool,
              q_axes=("act_batch", "act_length", "act_heads", "act_kv"),
              kv_axes=("act_batch", "act_length", "act_heads", "act_kv")) -> Array:
  """Splash attention of q [B, Q, N, D] over k, v [B, K, Nk, D]; `segments`
  a `layers.Segments` (q [B, Q], kv [B, K] ids) or None; [B, Q, N, D] out."""
  interpret = target_platform() != "tpu"
  q_seg, kv_seg = (None, None) if segments is None else (segments.q, segments.kv)
  mesh = jax.sharding.get_abstract_mesh()
  run = functools.partial(_local_attention, causal=causal, interpret=interpret)
  if mesh.empty:
    return run(q, k, v, q_seg, kv_seg)
  q_spec, kv_spec = _spec(q_axes), _spec(kv_axes)
  if kv_spec[2] != q_spec[2] and k.shape[2] != q.shape[2]:
    # Grouped keys/values split differently from the query heads: give every
    # query head its own copy so that local head n still reads kv head n // G.
    group = q.shape[2] // k.shape[2]
    k, v = jnp.repeat(k, group, axis=2), jnp.repeat(v, group, axis=2)
    kv_spec = q_spec
  seg_q = jax.sharding.PartitionSpec(q_spec[0], None)
  seg_kv = jax.sharding.PartitionSpec(kv_spec[0], None)
  if q_seg is None:
    body = lambda q, k, v: run(q, k, v, None, None)
    specs = (q_spec, kv_spec, kv_spec)
    args = (q, k, v)
  else:
    body, specs, args = run, (q_spec, kv_spec, kv_spec, seg_q, seg_kv), (q, k, v, q_seg, kv_seg)
  return jax.shard_map(body, mesh=mesh, in_specs=specs, out_specs=q_spec,
                       check_vma=False)(*args)
