"""Attention through jax.nn.dot_product_attention against a float64 numpy
reference (causal + packing segments + key padding, float32 and bfloat16),
the implementation choice, and on a GPU the absence of a float32 [B,H,L,L]
tensor in the compiled bfloat16 path."""
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metalm_jax.models import layers
from metalm_jax.models.decoder import segment_mask
from tests.model_fixtures import numpy_attention

B, L, E, H, D = 2, 12, 32, 4, 8


def _inputs(seed=0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(B, L, E)).astype(np.float32)
  # Row 0: two packed segments (1, 2); row 1: 3 padding positions, then one segment.
  seg = np.array([[1] * 7 + [2] * 5, [0] * 3 + [1] * 9], np.int32)
  return x, seg


def _module(dtype=jnp.float32, causal=True, impl="xla"):
  return layers.Attention(H, D, dtype=dtype, causal=causal, impl=impl)


def _params(module, x, seed=1):
  p = nn.meta.unbox(module.init(jax.random.key(seed), x)["params"])
  # Non-zero biases, so a dropped bias cannot pass.
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda a: np.asarray(a) + 0.1 * rng.normal(size=a.shape).astype(np.float32),
                      p)


def _ref_mask(seg, causal):
  same = seg[:, :, None] == seg[:, None, :]
  if causal:
    same &= np.tril(np.ones((L, L), bool))[None]
  return same[:, None]


@pytest.mark.parametrize("causal", [True, False])
def test_matches_float64_reference_float32(causal):
  x, seg = _inputs()
  m = _module(causal=causal)
  p = _params(m, x)
  mask = np.asarray(segment_mask(jnp.asarray(seg)))
  out = np.asarray(jax.jit(lambda p, x, mk: m.apply({"params": p}, x, mk))(p, x, mask))
  ref = numpy_attention(x.astype(np.float64), jax.tree.map(np.float64, p), _ref_mask(seg, causal))
  np.testing.assert_allclose(out, ref, atol=2e-5, rtol=1e-5)


def test_key_padding_mask_of_the_encoders():
  """[B, 1, 1, S] key mask (the text encoder's): padded keys get no weight."""
  x, _ = _inputs(2)
  keys = np.ones((B, L), bool)
  keys[1, 8:] = False
  m = _module(causal=False)
  p = _params(m, x)
  out = np.asarray(m.apply({"params": p}, x, keys[:, None, None, :]))
  full = np.broadcast_to(keys[:, None, None, :], (B, 1, L, L))
  ref = numpy_attention(x.astype(np.float64), jax.tree.map(np.float64, p), full)
  np.testing.assert_allclose(out, ref, atol=2e-5, rtol=1e-5)


def test_bfloat16_compute_within_tolerance():
  """bf16 inputs and weights in the matmuls, float32 softmax: within 3e-2 of
  the float64 result (relative to its largest value)."""
  x, seg = _inputs(3)
  m = _module(dtype=jnp.bfloat16)
  p = _params(m, x)
  out = m.apply({"params": p}, x, segment_mask(jnp.asarray(seg)))
  assert out.dtype == jnp.bfloat16
  ref = numpy_attention(x.astype(np.float64), jax.tree.map(np.float64, p), _ref_mask(seg, True))
  err = np.abs(np.asarray(out, np.float64) - ref).max() / np.abs(ref).max()
  assert err < 3e-2, err


@pytest.mark.parametrize("impl,platform,dtype,head_dim,want", [
    ("auto", "gpu", jnp.bfloat16, 64, "cudnn"),
    ("auto", "gpu", jnp.float16, 128, "cudnn"),
    ("auto", "gpu", jnp.float32, 64, "xla"),      # cuDNN flash attention is bf16/fp16 only
    ("auto", "gpu", jnp.bfloat16, 12, "xla"),     # head_dim not a multiple of 8
    ("auto", "cpu", jnp.bfloat16, 64, "xla"),
    ("auto", "tpu", jnp.bfloat16, 64, "xla"),
    (None, "gpu", jnp.bfloat16, 64, "cudnn"),
    ("xla", "gpu", jnp.bfloat16, 64, "xla"),
    ("cudnn", "cpu", jnp.float32, 64, "cudnn"),   # explicit choice is kept (benchmarks)
])
def test_implementation_choice(impl, platform, dtype, head_dim, want):
  assert layers.resolve_attention_impl(impl, dtype, head_dim, platform) == want


@pytest.mark.parametrize("q_len,kv_len,want", [(2048, 2048, "cudnn"), (197, 197, "xla"),
                                               (1, 2048, "xla"), (2048, 2047, "xla")])
def test_auto_avoids_odd_lengths(q_len, kv_len, want):
  # cuDNN refused to train a ViT-B/16's 197 tokens on an H100 (jax 0.11.2).
  got = layers.resolve_attention_impl("auto", jnp.bfloat16, 64, "gpu", q_len=q_len, kv_len=kv_len)
  assert got == want


def test_unknown_implementation_is_named():
  with pytest.raises(ValueError, match="attention_impl='flash'"):
    layers.resolve_attention_impl("flash", jnp.bfloat16, 64, "gpu")


def _float32_scores(hlo_text, b, h, l):
  """Compiled-HLO float32 shapes holding b * h * l * l elements with two
  dims of size l: the [B, H, L, L] scores in any dim order or grouping."""
  hits = []
  for dims in re.findall(r"f32\[([0-9,]+)\]", hlo_text):
    shape = [int(d) for d in dims.split(",")]
    if np.prod(shape) == b * h * l * l and shape.count(l) >= 2:
      hits.append(shape)
  return hits


def test_xla_path_materialises_float32_scores_on_cpu():
  """The check used on GPU below, shown to detect the tensor where it exists:
  the XLA path (CPU) does build float32 [B, H, L, L] scores."""
  x, seg = _inputs()
  m = _module(dtype=jnp.bfloat16)
  p = _params(m, x)
  hlo = jax.jit(lambda p, x, s: m.apply({"params": p}, x, segment_mask(s))).lower(
      p, x, seg).compile().as_text()
  assert _float32_scores(hlo, B, H, L)


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="needs a GPU with cuDNN")
def test_gpu_bfloat16_path_is_fused_without_float32_scores():
  """On a GPU, 'auto' in bfloat16 lowers to the cuDNN fused attention call
  (forward and backward) and no float32 [B, H, L, L] tensor appears."""
  b, l, h, d = 2, 256, 4, 64
  m = layers.Attention(h, d, dtype=jnp.bfloat16, causal=True, impl="auto")
  x = jnp.ones((b, l, h * d), jnp.float32)
  seg = jnp.ones((b, l), jnp.int32)
  p = m.init(jax.random.key(0), x)["params"]
  loss = lambda p: m.apply({"params": p}, x, segment_mask(seg)).astype(jnp.float32).sum()
  hlo = jax.jit(jax.grad(loss)).lower(p).compile().as_text()
  assert "cudnn" in hlo and "fmha" in hlo.lower()
  assert not _float32_scores(hlo, b, h, l)
