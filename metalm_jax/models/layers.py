"""Transformer building blocks shared by the decoder and the encoders.

Parameters carry logical axis names (embed, heads, kv, mlp, vocab, ...);
activations are constrained with `act_*` names. The rules table that maps
them to mesh axes lives in the config (default: metalm_jax/presets.py logical_rules).
"""
from __future__ import annotations

import functools
import logging
import math
from typing import Any, Callable, NamedTuple, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jax.ad_checkpoint import checkpoint_name

from metalm_jax.models import einsum_attention
from metalm_jax.models import lora as lora_lib
from metalm_jax.models import splash as splash_lib
from metalm_jax.registry import Registry

Array = jax.Array
ACTIVATIONS = Registry("activation")


def gelu_erf(x):
  """Exact GELU, x * Phi(x), written 0.5 x (1 + erf(x / sqrt 2)) as torch
  and HF compute it. jax.nn.gelu(approximate=False) takes erfc, which XLA
  lowers to two branches of exponentials and selects: ~2x the elementwise
  cost on CPU. The two agree within float32 rounding
  (tests/test_layer_norm_grad.py)."""
  return 0.5 * x * (1.0 + jax.lax.erf(x * np.float32(1.0 / np.sqrt(2.0)).astype(x.dtype)))


ACTIVATIONS.register("gelu")(gelu_erf)
ACTIVATIONS.register("gelu_new")(functools.partial(jax.nn.gelu, approximate=True))
ACTIVATIONS.register("gelu_tanh")(functools.partial(jax.nn.gelu, approximate=True))
ACTIVATIONS.register("quick_gelu")(lambda x: x * jax.nn.sigmoid(1.702 * x))
ACTIVATIONS.register("relu")(jax.nn.relu)
ACTIVATIONS.register("silu")(jax.nn.silu)



def dtype_of(name: str):
  return jnp.dtype(name)


def param_init(init, axes):
  return nn.with_logical_partitioning(init, axes)


def constrain(x, axes):
  return nn.with_logical_constraint(x, axes)


def _ln_forward(x, eps):
  """((x - mean) * rsqrt(var + eps), rsqrt(var + eps)) in float32."""
  xf = x.astype(jnp.float32)
  mean = xf.mean(-1, keepdims=True)
  centred = xf - mean
  rstd = jax.lax.rsqrt(jnp.square(centred).mean(-1, keepdims=True) + eps)
  return centred * rstd, rstd


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def layer_norm(x, scale, bias, eps, dtype):
  """(x - mean) * rsqrt(var + eps) * scale + bias over the last axis, with
  float32 statistics, cast to `dtype`; the backward is written out (below).

  Why by hand: in autodiff's backward XLA:CPU fused the input gradient's
  elementwise chain into each transposing consumer of it (the previous
  layer's weight-gradient matmuls and the residual sums), recomputing it per
  consumer: the layer norms were 16% of the `bench` step's op time. With
  this backward they are ~3% and the step ~8% faster (docs/performance.md,
  "The train step on CPU"). The forward is the same arithmetic as before,
  bit for bit; the gradients agree with autodiff's within float32 rounding
  (tests/test_layer_norm_grad.py)."""
  normed, _ = _ln_forward(x, eps)
  return (normed * scale + bias).astype(dtype)


def _layer_norm_fwd(x, scale, bias, eps, dtype):
  normed, rstd = _ln_forward(x, eps)
  y = (normed * scale + bias).astype(dtype)
  return y, (normed, rstd, scale, jnp.zeros((), x.dtype), jnp.zeros((), bias.dtype))


def _layer_norm_bwd(eps, dtype, res, g):
  """d/dx of y = n * s + b, n = (x - mean) * r: with h = g * s,
  dx = r * (h - mean(h) - n * mean(h * n)); ds = sum(g * n); db = sum(g)."""
  del eps, dtype
  normed, rstd, scale, x_like, bias_like = res
  gf = g.astype(jnp.float32)
  h = gf * scale
  dx = rstd * (h - h.mean(-1, keepdims=True) - normed * (h * normed).mean(-1, keepdims=True))
  axes = tuple(range(g.ndim - 1))
  d_scale = (gf * normed).sum(axes).astype(scale.dtype)
  d_bias = gf.sum(axes).astype(bias_like.dtype)
  return dx.astype(x_like.dtype), d_scale, d_bias


layer_norm.defvjp(_layer_norm_fwd, _layer_norm_bwd)


class LayerNorm(nn.Module):
  """LayerNorm with float32 statistics; params `scale` and `bias`
  (`layer_norm` above: the forward of every earlier version, a hand-written
  backward).

  Not `flax.linen.LayerNorm`: even with use_fast_variance=False it computes
  (x - mean) * (rsqrt(var + eps) * scale), we (x - mean) * rsqrt(...) * scale;
  in float32 about a third of the outputs then differ by one ulp (measured on
  [4, 33, 64] inputs; bfloat16 outputs are equal), so switching would change
  the numerics of every float32 run. The param names match flax's, so the
  HF converters and checkpoints would not change if it were switched."""
  eps: float = 1e-5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    d = x.shape[-1]
    scale = self.param("scale", param_init(nn.initializers.ones, ("norm",)), (d,))
    bias = self.param("bias", param_init(nn.initializers.zeros, ("norm",)), (d,))
    return layer_norm(x, scale, bias, self.eps, jnp.dtype(self.dtype))


class RMSNorm(nn.Module):
  """Root-mean-square norm with float32 statistics; one param `scale`.

  plus_one=False (Llama, Qwen2): y = (x * rsqrt(mean(x^2) + eps)) cast to the
  compute dtype, times `scale` (init 1), as HF's LlamaRMSNorm.
  plus_one=True (Gemma): y = (x * rsqrt(mean(x^2) + eps) * (1 + scale)) in
  float32, then cast; `scale` starts at 0 and holds HF's weight as it is."""
  eps: float = 1e-6
  dtype: Any = jnp.float32
  plus_one: bool = False

  @nn.compact
  def __call__(self, x):
    d = x.shape[-1]
    init = nn.initializers.zeros if self.plus_one else nn.initializers.ones
    scale = self.param("scale", param_init(init, ("norm",)), (d,))
    xf = x.astype(jnp.float32)
    normed = xf * jax.lax.rsqrt(jnp.square(xf).mean(-1, keepdims=True) + self.eps)
    if self.plus_one:
      return (normed * (1.0 + scale)).astype(self.dtype)
    return normed.astype(self.dtype) * scale.astype(self.dtype)


# model.<stack>.norm_type -> norm module class, called as cls(eps, dtype, name=...).
NORM_TYPES = Registry("norm_type")
NORM_TYPES.register("layer")(LayerNorm)
NORM_TYPES.register("rms")(RMSNorm)
NORM_TYPES.register("rms_plus_one")(functools.partial(RMSNorm, plus_one=True))


def sinusoidal_table(length: int, dim: int) -> np.ndarray:
  """[length, dim] table: sin on the first half of channels, cos on the second."""
  half = dim // 2
  freq = np.exp(-math.log(10000.0) * np.arange(half) / max(half, 1))
  ang = np.arange(length)[:, None] * freq[None, :]
  table = np.zeros((length, dim), np.float32)
  table[:, :half] = np.sin(ang)
  table[:, half:2 * half] = np.cos(ang)
  return table


def apply_rotary(x: Array, positions: Array, theta: float = 10000.0,
                 freq_scale: Optional[tuple] = None) -> Array:
  """Rotary embedding on x [B, T, H, D] at positions [B, T], in HF Llama's
  rotate-half form: channel i pairs with channel i + D/2 (not interleaved),
  inverse frequency theta^(-i / (D/2)) times `freq_scale[i]` (rope scaling,
  metalm_jax/models/rotary.py). Computed in float32."""
  d = x.shape[-1]
  half = d // 2
  inv = 1.0 / (theta ** (jnp.arange(half, dtype=jnp.float32) / half))
  if freq_scale is not None:
    inv = inv * jnp.asarray(freq_scale, jnp.float32)
  ang = positions[..., None].astype(jnp.float32) * inv  # [B, T, half]
  sin, cos = jnp.sin(ang)[:, :, None, :], jnp.cos(ang)[:, :, None, :]
  x1, x2 = x[..., :half].astype(jnp.float32), x[..., half:].astype(jnp.float32)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x.dtype)


class DenseND(nn.Module):
  """y = x . W + b, contracting the last `n_in` dims of x with the leading
  dims of W [in..., out...]. Glorot-uniform init times `init_scale`, with fans
  over all in / out dims (written out, rather than flax DenseGeneral, whose
  flat-shape init clashes with logical sharding constraints under a mesh).

  `lora` (metalm_jax/models/lora.py): adds a low-rank adapter, params
  `lora_a` [in..., r] and `lora_b` [r, out...] next to `kernel`:
  y + (alpha / r) * (dropout(x) . A) . B. They are created after `kernel`
  and `bias`, so an unrolled stack's base params init as without them (in
  nn.scan, flax's rng counters carry over between its traces, so a scanned
  base inits differently; a LoRA base is loaded from init_from /
  init_components anyway)."""
  out_shape: tuple
  axes: tuple
  n_in: int = 1
  init_scale: float = 1.0
  use_bias: bool = True
  dtype: Any = jnp.float32
  lora: Optional[lora_lib.Lora] = None

  @nn.compact
  def __call__(self, x, deterministic: bool = True):
    n_in, n_out = self.n_in, len(self.out_shape)
    in_shape = x.shape[x.ndim - n_in:]
    init = nn.initializers.variance_scaling(
        self.init_scale ** 2, "fan_avg", "uniform", in_axis=tuple(range(n_in)),
        out_axis=tuple(range(n_in, n_in + n_out)))
    w = self.param("kernel", param_init(init, self.axes), in_shape + tuple(self.out_shape))
    y = jax.lax.dot_general(
        x.astype(self.dtype), w.astype(self.dtype),
        ((tuple(range(x.ndim - n_in, x.ndim)), tuple(range(n_in))), ((), ())))
    if self.use_bias:
      b = self.param("bias", param_init(nn.initializers.zeros, self.axes[n_in:]),
                     tuple(self.out_shape))
      y = y + b.astype(self.dtype)
    if self.lora is not None:
      y = y + self._adapter(x, in_shape, deterministic)
    return y

  def _adapter(self, x, in_shape, deterministic):
    lora, n_in = self.lora, self.n_in
    rank_axis = lora_lib.RANK_AXIS
    a = self.param(lora_lib.A_NAME,
                   param_init(lora_lib.INITS.get(lora.init)(lora.rank, n_in),
                              self.axes[:n_in] + (rank_axis,)),
                   in_shape + (lora.rank,))
    b = self.param(lora_lib.B_NAME,
                   param_init(nn.initializers.zeros, (rank_axis,) + self.axes[n_in:]),
                   (lora.rank,) + tuple(self.out_shape))
    x = x.astype(self.dtype)
    if lora.dropout:
      x = nn.Dropout(lora.dropout)(x, deterministic=deterministic)
    return lora_lib.delta(x, a.astype(self.dtype), b.astype(self.dtype), n_in, lora.scale)


CUDNN_DTYPES = (jnp.bfloat16, jnp.float16)
_log = logging.getLogger(__name__)


@struct.dataclass
class Segments:
  """An attention mask as data: query t of row b may see key s iff
  q[b, t] == kv[b, s] (int32 ids [B, Q] and [B, K]); causality is added by
  the attention itself. The fused kernels take the ids (splash), the others
  the dense mask (`dense`)."""
  q: Array
  kv: Array

  @classmethod
  def packed(cls, segment_ids):
    """Packing: each position sees its own segment (padding is segment 0)."""
    return cls(segment_ids, segment_ids)

  @classmethod
  def key_padding(cls, valid):
    """Bidirectional self-attention over the keys `valid` [B, S] marks (the
    text encoder's): every query is segment 1, valid keys 1, padding 0. A row
    with no valid key (an empty item) attends evenly, as XLA's masked softmax
    does; its output is not docked."""
    valid = valid.astype(jnp.int32)
    return cls(jnp.ones_like(valid), valid)

  def dense(self):
    """bool [B, 1, Q, K]."""
    return (self.q[:, :, None] == self.kv[:, None, :])[:, None]


def _cudnn_unfit(dtype, head_dim, q_len, kv_len, dense_mask) -> str:
  del dense_mask  # jax's cuDNN call takes a dense mask
  if jnp.dtype(dtype) not in CUDNN_DTYPES:
    return f"dtype {jnp.dtype(dtype).name} (cuDNN flash attention is bfloat16/float16)"
  if head_dim % 8 or head_dim > 128:
    return f"head_dim {head_dim} (cuDNN: a multiple of 8 up to 128)"
  if q_len % 2 or kv_len % 2:
    return f"odd length {q_len} x {kv_len}"
  return ""


def _splash_unfit(dtype, head_dim, q_len, kv_len, dense_mask) -> str:
  del dtype, head_dim
  return splash_lib.unfit_reason(q_len, kv_len, dense_mask)


def _xla_unfit(*_) -> str:
  return ""


class AttentionImpl(NamedTuple):
  """`unfit(dtype, head_dim, q_len, kv_len, dense_mask)`: '' or why it cannot
  run a call; `attend(q, k, v, mask, causal, kv_axes)`: [B, Q, N, D] out."""
  unfit: Callable[..., str]
  attend: Callable[..., Array]


# attention_impl -> AttentionImpl.
ATTENTION_IMPLEMENTATIONS = Registry("attention_impl")
# The fused implementation `auto` picks per platform; XLA elsewhere or when it does not fit.
AUTO_ATTENTION = {"gpu": "cudnn", "cuda": "cudnn", "tpu": "splash", "cpu": "einsum"}
ATTENTION_IMPLS = ("auto", "xla", "cudnn", "splash", "einsum")


@functools.lru_cache(maxsize=None)
def _log_fallback(impl: str, reason: str, level: int = logging.INFO) -> None:
  _log.log(level, "attention: XLA instead of %s: %s", impl, reason)


def resolve_attention_impl(impl, dtype, head_dim: int, platform: Optional[str] = None,
                           q_len: int = 0, kv_len: int = 0, masked: bool = False,
                           dense_mask: bool = False) -> str:
  """'xla', 'cudnn' or 'splash' for config value `impl` ('auto' / None or one
  of them).

  jax.nn.dot_product_attention(implementation=None) always takes the XLA path
  (jax 0.10.2), which builds float32 [B, H, Q, K] logits. 'auto' therefore
  picks the platform's fused kernel itself (AUTO_ATTENTION, platform = the
  default backend): on a GPU cuDNN flash attention for bfloat16/float16 with
  head_dim a multiple of 8 up to 128 and even lengths; on a TPU Pallas splash
  attention for lengths that are multiples of 128 and a segment-id mask (not
  `dense_mask`, the decode cache's); XLA elsewhere, logging why once per
  reason. An explicit 'splash' runs the kernel on any platform (the Pallas
  interpreter off TPU) wherever it fits and takes XLA with a logged warning
  where it does not (init's dummy batch, the decode cache, other lengths),
  so one config trains, evaluates and decodes.
  """
  del masked
  impl = "auto" if impl is None else impl
  if impl not in ATTENTION_IMPLS:
    raise ValueError(f"attention_impl={impl!r}; expected one of {ATTENTION_IMPLS} (or None)")
  if impl == "splash":
    # One config runs every call of the model: init's dummy length-8 batch,
    # the decode cache, evaluators' lengths. Where the kernel cannot run, XLA.
    reason = _splash_unfit(dtype, head_dim, q_len, kv_len, dense_mask)
    if reason:
      _log_fallback("splash", reason, logging.WARNING)
      return "xla"
  if impl != "auto":
    return impl
  fused = AUTO_ATTENTION.get(platform or jax.default_backend())
  if fused is None:
    return "xla"
  reason = ATTENTION_IMPLEMENTATIONS.get(fused).unfit(dtype, head_dim, q_len, kv_len, dense_mask)
  if reason:
    _log_fallback(fused, reason)
    return "xla"
  return fused


def _jax_attention(q, k, v, mask, causal, kv_axes, implementation):
  del kv_axes
  if isinstance(mask, Segments):
    mask = mask.dense()
  if mask is not None:
    mask = jnp.broadcast_to(mask, (q.shape[0], 1, q.shape[1], k.shape[1]))
  return jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=causal,
                                      implementation=implementation)


def _splash_attention(q, k, v, mask, causal, kv_axes):
  return splash_lib.attention(q, k, v, mask, causal, kv_axes=kv_axes)


def _einsum_attention(q, k, v, mask, causal, kv_axes):
  del kv_axes
  if isinstance(mask, Segments):
    mask = mask.dense()
  return einsum_attention.attention(q, k, v, mask, causal)


ATTENTION_IMPLEMENTATIONS.register("xla")(
    AttentionImpl(_xla_unfit, functools.partial(_jax_attention, implementation="xla")))
ATTENTION_IMPLEMENTATIONS.register("cudnn")(
    AttentionImpl(_cudnn_unfit, functools.partial(_jax_attention, implementation="cudnn")))
ATTENTION_IMPLEMENTATIONS.register("splash")(AttentionImpl(_splash_unfit, _splash_attention))
ATTENTION_IMPLEMENTATIONS.register("einsum")(AttentionImpl(_xla_unfit, _einsum_attention))


class Attention(nn.Module):
  """Multi-head attention through jax.nn.dot_product_attention, with an
  optional KV cache.

  causal: queries see keys at or before their own position. mask: an extra
  constraint, `Segments` ids (packing segments, key padding; what splash
  takes) or a bool array broadcastable to [B, 1, Q, K] (True = may attend).
  The kernel is `impl` (ATTENTION_IMPLEMENTATIONS, resolve_attention_impl).
  In decode mode the cache holds keys for `cache_len` positions; `key_valid`
  [B, T] marks which of the T new positions are real tokens, and causality is
  by absolute cache position.
  Grouped-query attention (`num_kv_heads` K < num_heads N, K dividing N):
  keys and values have K heads (query head n reads kv head n // (N / K), as
  HF's repeat_kv), the cache holds K heads, and their params / activations
  carry the logical axes `kv_heads` / `act_kv_heads` (unmapped = replicated).
  Rotary positions (`rotary`) are applied to q and k before caching, at the
  absolute `positions` of every call, so decode steps rotate like a full pass.
  Activations named for remat policies (jax.ad_checkpoint.checkpoint_name):
  'query_proj', 'key_proj', 'value_proj' and 'attn_out' (the attention result
  before the output projection).
  """
  num_heads: int
  head_dim: int
  dtype: Any = jnp.float32
  use_bias: bool = True
  rotary: bool = False
  causal: bool = False
  impl: Optional[str] = "auto"
  out_init_scale: float = 1.0
  v_init_scale: float = 1.0
  num_kv_heads: int = 0          # grouped-query attention; 0 = num_heads
  qkv_bias: bool = False         # q/k/v biases even when use_bias is False (Qwen2)
  rope_theta: float = 10000.0
  rope_scale: Optional[tuple] = None  # per-frequency multipliers (models/rotary.py)
  lora: Optional[lora_lib.Lora] = None  # adapters on the projections lora.targets names

  @nn.compact
  def __call__(self, x, mask=None, positions=None, *, decode=False, key_valid=None,
               deterministic=True):
    emb = x.shape[-1]
    kv_heads = self.num_kv_heads or self.num_heads
    def proj(*args, name, **kw):
      lora = self.lora.on(name) if self.lora else None
      dense = DenseND(*args, dtype=self.dtype, lora=lora, name=name, **kw)
      return lambda y: dense(y, deterministic)
    in_proj = functools.partial(proj, use_bias=self.use_bias or self.qkv_bias)
    # Grouped keys/values get their own logical axis: K heads need not divide
    # the mesh axis that shards the num_heads query heads.
    grouped = kv_heads != self.num_heads
    q_axes, act = ("embed", "heads", "kv"), ("act_batch", "act_length", "act_heads", "act_kv")
    kv_axes = ("embed", "kv_heads", "kv") if grouped else q_axes
    kv_act = ("act_batch", "act_length", "act_kv_heads", "act_kv") if grouped else act
    q = in_proj((self.num_heads, self.head_dim), q_axes, name="query")(x)
    k = in_proj((kv_heads, self.head_dim), kv_axes, name="key")(x)
    v = in_proj((kv_heads, self.head_dim), kv_axes, init_scale=self.v_init_scale,
                name="value")(x)
    if self.rotary:
      rope = functools.partial(apply_rotary, positions=positions, theta=self.rope_theta,
                               freq_scale=self.rope_scale)
      q, k = rope(q), rope(k)
    q = checkpoint_name(constrain(q, act), "query_proj")
    k = checkpoint_name(constrain(k, kv_act), "key_proj")
    v = checkpoint_name(constrain(v, kv_act), "value_proj")

    causal = self.causal
    if decode:
      # Keys / values in the cache's layout [B, K, C, D]; the mask is causal
      # by absolute cache position.
      k, v, mask = self._update_cache(k, v, key_valid)
      impl = resolve_attention_impl(self.impl, q.dtype, self.head_dim, q_len=q.shape[1],
                                    kv_len=k.shape[2], masked=True, dense_mask=True)
      out = self._attend_cache(q, k, v, mask, impl, kv_act)
    else:
      impl = resolve_attention_impl(self.impl, q.dtype, self.head_dim, q_len=q.shape[1],
                                    kv_len=k.shape[1], masked=mask is not None,
                                    dense_mask=mask is not None and not isinstance(mask, Segments))
      out = ATTENTION_IMPLEMENTATIONS.get(impl).attend(q, k, v, mask, causal, kv_act)
    out = checkpoint_name(constrain(out, act), "attn_out")
    return proj((emb,), ("heads", "kv", "embed"), n_in=2, init_scale=self.out_init_scale,
                use_bias=self.use_bias, name="out")(out)

  def _update_cache(self, k, v, key_valid):
    """Writes the T new keys/values [B, T, K, D] at the cache index; returns
    the cached keys and values [B, K, C, D] and the [B, 1, T, C] mask.

    The cache is laid out [B, K, C, D] (heads before positions), as the
    attention's batched dots over (B, K) read it: laid out [B, C, K, D], XLA
    transposed all of it for both dots in every layer at every step (on CPU
    8 full-cache copies per step, the batch-8 decode cost; docs/performance.md).
    The index is kept per row ([B], all equal) so that every cache array has
    the batch on axis 0, also when a scanned stack adds its layer axis (at
    axis 1)."""
    b, t = k.shape[:2]
    k, v = jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2)  # [B, K, T, D]: T rows only
    is_init = not self.has_variable("cache", "cached_key")
    ck = self.variable("cache", "cached_key", jnp.zeros, k.shape, k.dtype)
    cv = self.variable("cache", "cached_value", jnp.zeros, v.shape, v.dtype)
    cvalid = self.variable("cache", "cached_valid", jnp.zeros, (b, t), jnp.bool_)
    cidx = self.variable("cache", "cache_index", lambda: jnp.zeros((b,), jnp.int32))
    if is_init:  # init call: shapes only, attend causally within the chunk
      causal = jnp.tril(jnp.ones((t, t), jnp.bool_))
      return k, v, causal[None, None]
    idx = cidx.value[0]
    ck.value = jax.lax.dynamic_update_slice(ck.value, k, (0, 0, idx, 0))
    cv.value = jax.lax.dynamic_update_slice(cv.value, v, (0, 0, idx, 0))
    cvalid.value = jax.lax.dynamic_update_slice(cvalid.value, key_valid.astype(jnp.bool_), (0, idx))
    cidx.value = cidx.value + t
    cache_len = ck.value.shape[2]
    q_abs = idx + jnp.arange(t)
    k_abs = jnp.arange(cache_len)
    mask = (k_abs[None, :] <= q_abs[:, None])[None, None] & cvalid.value[:, None, None, :]
    return ck.value, cv.value, mask

  def _attend_cache(self, q, k, v, mask, impl, kv_axes):
    """Attention of q [B, T, N, D] over the cache k, v [B, K, C, D] with the
    bool mask [B, 1, T, C]: [B, T, N, D]. With XLA, explicit einsums that read
    the cache in its layout, with the numerics of jax.nn.dot_product_attention's
    XLA path (logits in float32 at least, scaled by 1/sqrt(D), masked with the
    same large negative value, float32 softmax; query head n reads kv head
    n // (N / K)). A fused implementation gets the keys as [B, C, K, D]."""
    if impl != "xla":
      k, v = jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2)
      return ATTENTION_IMPLEMENTATIONS.get(impl).attend(q, k, v, mask, False, kv_axes)
    b, t, n, d = q.shape
    kv = k.shape[1]
    qg = q.reshape(b, t, kv, n // kv, d)
    logits_dtype = jnp.promote_types(q.dtype, jnp.float32)
    logits = jnp.einsum("btkgd,bkcd->bkgtc", qg, k, preferred_element_type=logits_dtype)
    logits = logits * jnp.array(1.0 / math.sqrt(d), logits_dtype)
    big_neg = -0.7 * min(float(jnp.finfo(logits_dtype).max), float(jnp.finfo(jnp.float32).max))
    logits = jnp.where(mask[:, :, None], logits, jnp.array(big_neg, logits_dtype))
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgtc,bkcd->btkgd", probs, v)
    return out.reshape(b, t, n, d)


class Mlp(nn.Module):
  """wo(act(wi(x))). `lora` adapts the projections its targets name (wi, wo)."""
  hidden: int
  activation: str = "gelu"
  dtype: Any = jnp.float32
  use_bias: bool = True
  init_scale: float = 1.0
  lora: Optional[lora_lib.Lora] = None

  @nn.compact
  def __call__(self, x, deterministic: bool = True):
    dense = _mlp_dense(self, deterministic)
    h = dense((self.hidden,), ("embed", "mlp"), "wi")(x)
    h = ACTIVATIONS.get(self.activation)(checkpoint_name(h, "mlp_hidden"))
    h = constrain(h, ("act_batch", "act_length", "act_mlp"))
    return dense((x.shape[-1],), ("mlp", "embed"), "wo")(h)


class GatedMlp(Mlp):
  """Gated MLP: wo(act(wi_gate(x)) * wi_up(x)). SwiGLU with activation
  'silu' (Llama, Qwen2), GeGLU with 'gelu_tanh' (Gemma). Both hidden
  pre-activations are named 'mlp_hidden' for the remat policies. `lora`
  adapts the projections its targets name (wi_gate, wi_up, wo). Fields as
  Mlp's, with the gated families' defaults."""
  activation: str = "silu"
  use_bias: bool = False

  @nn.compact
  def __call__(self, x, deterministic: bool = True):
    dense = _mlp_dense(self, deterministic)
    gate = checkpoint_name(dense((self.hidden,), ("embed", "mlp"), "wi_gate")(x), "mlp_hidden")
    up = checkpoint_name(dense((self.hidden,), ("embed", "mlp"), "wi_up")(x), "mlp_hidden")
    h = ACTIVATIONS.get(self.activation)(gate) * up
    h = constrain(h, ("act_batch", "act_length", "act_mlp"))
    return dense((x.shape[-1],), ("mlp", "embed"), "wo")(h)


def _mlp_dense(mlp, deterministic):
  """(out_shape, axes, name) -> x -> y: a projection of MLP module `mlp`
  (glorot-uniform times its init_scale; params kernel, bias, adapters)."""
  def make(out_shape, axes, name):
    lora = mlp.lora.on(name) if mlp.lora else None
    dense = DenseND(out_shape, axes, init_scale=mlp.init_scale, use_bias=mlp.use_bias,
                    dtype=mlp.dtype, lora=lora, name=name)
    return lambda y: dense(y, deterministic)
  return make


# model.<stack>.mlp -> MLP module class, called as cls(hidden, activation, dtype=,
# use_bias=, init_scale=, lora=, name=) and applied as mlp(x, deterministic).
MLP_KINDS = Registry("mlp")
MLP_KINDS.register("dense")(Mlp)
MLP_KINDS.register("gated")(GatedMlp)

NORM_STYLES = ("pre", "post", "deepnorm")


class Block(nn.Module):
  """One Transformer layer: attention + MLP with pre-LN, post-LN or DeepNorm.

  The norm module (`norm_type`), the MLP (`mlp`: dense or gated), grouped
  keys/values (`num_kv_heads`), q/k/v biases (`qkv_bias`) and the rotary
  base / scaling are per-family choices (metalm_jax/presets.py, decoder families).
  `lora` puts low-rank adapters on the attention / MLP projections its
  targets name (metalm_jax/models/lora.py).

  DeepNorm (Wang et al., 2022): x <- LN(alpha * x + f(x)), with the value,
  output and MLP weights initialised scaled by beta (set by the caller).
  `dropout` applies to the residual branches (fairseq's --dropout); attention
  probabilities are not dropped (fairseq's default attention_dropout=0; the
  fused attention kernels have no dropout). `scan_carry` returns (x, None),
  the form nn.scan expects (see metalm_jax/models/stack.py).
  """
  num_heads: int
  head_dim: int
  mlp_dim: int
  activation: str = "gelu"
  norm: str = "pre"
  ln_eps: float = 1e-5
  dropout: float = 0.0
  use_bias: bool = True
  rotary: bool = False
  causal: bool = False
  attention_impl: Optional[str] = "auto"
  dtype: Any = jnp.float32
  deepnorm_alpha: float = 1.0
  deepnorm_beta: float = 1.0
  scan_carry: bool = False
  norm_type: str = "layer"       # NORM_TYPES: layer | rms | rms_plus_one
  mlp: str = "dense"             # MLP_KINDS: dense | gated
  num_kv_heads: int = 0
  qkv_bias: bool = False
  rope_theta: float = 10000.0
  rope_scale: Optional[tuple] = None
  lora: Optional[lora_lib.Lora] = None  # adapters (models/lora.py); the decoder's only

  @nn.compact
  def __call__(self, x, mask=None, positions=None, key_valid=None, decode=False,
               deterministic=True):
    beta = self.deepnorm_beta if self.norm == "deepnorm" else 1.0
    attn = Attention(self.num_heads, self.head_dim, dtype=self.dtype, use_bias=self.use_bias,
                     rotary=self.rotary, causal=self.causal, impl=self.attention_impl,
                     out_init_scale=beta, v_init_scale=beta, num_kv_heads=self.num_kv_heads,
                     qkv_bias=self.qkv_bias, rope_theta=self.rope_theta,
                     rope_scale=self.rope_scale, lora=self.lora, name="attn")
    mlp_mod = MLP_KINDS.get(self.mlp)(self.mlp_dim, self.activation, dtype=self.dtype,
                                      use_bias=self.use_bias, init_scale=beta, lora=self.lora,
                                      name="mlp")
    mlp = lambda y: mlp_mod(y, deterministic)
    drop = lambda y: nn.Dropout(self.dropout)(y, deterministic=deterministic) if self.dropout else y
    norm = NORM_TYPES.get(self.norm_type)
    ln1 = norm(self.ln_eps, self.dtype, name="ln_attn")
    ln2 = norm(self.ln_eps, self.dtype, name="ln_mlp")
    call_attn = lambda y: attn(y, mask, positions, decode=decode, key_valid=key_valid,
                               deterministic=deterministic)
    if self.norm == "pre":
      x = x + drop(call_attn(ln1(x)))
      x = x + drop(mlp(ln2(x)))
    elif self.norm in ("post", "deepnorm"):
      a = self.deepnorm_alpha if self.norm == "deepnorm" else 1.0
      x = ln1(a * x + drop(call_attn(x)))
      x = ln2(a * x + drop(mlp(x)))
    else:
      raise ValueError(f"norm={self.norm!r}; expected one of {NORM_STYLES}")
    x = constrain(x, ("act_batch", "act_length", "act_embed"))
    return (x, None) if self.scan_carry else x
