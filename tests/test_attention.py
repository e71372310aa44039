"""Attention through jax.nn.dot_product_attention against a float64 numpy
reference (causal + packing segments + key padding, float32 and bfloat16),
the implementation choice, on a GPU the absence of a float32 [B,H,L,L]
tensor in the compiled bfloat16 path, and the TPU splash kernel run by the
Pallas interpreter on CPU (forward, gradients, grouped heads, sharded in
shard_map over the 8-device mesh)."""
import functools
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


IMPLS = ("xla", "einsum")  # the XLA-compiled forms (splash below, cuDNN on a GPU)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("causal", [True, False])
def test_matches_float64_reference_float32(causal, impl):
  x, seg = _inputs()
  m = _module(causal=causal, impl=impl)
  p = _params(m, x)
  mask = np.asarray(segment_mask(jnp.asarray(seg)).dense())
  out = np.asarray(jax.jit(lambda p, x, mk: m.apply({"params": p}, x, mk))(p, x, mask))
  ref = numpy_attention(x.astype(np.float64), jax.tree.map(np.float64, p), _ref_mask(seg, causal))
  np.testing.assert_allclose(out, ref, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("impl", IMPLS)
def test_key_padding_mask_of_the_encoders(impl):
  """[B, 1, 1, S] key mask (the text encoder's): padded keys get no weight."""
  x, _ = _inputs(2)
  keys = np.ones((B, L), bool)
  keys[1, 8:] = False
  m = _module(causal=False, impl=impl)
  p = _params(m, x)
  out = np.asarray(m.apply({"params": p}, x, keys[:, None, None, :]))
  full = np.broadcast_to(keys[:, None, None, :], (B, 1, L, L))
  ref = numpy_attention(x.astype(np.float64), jax.tree.map(np.float64, p), full)
  np.testing.assert_allclose(out, ref, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("impl", IMPLS)
def test_bfloat16_compute_within_tolerance(impl):
  """bf16 inputs and weights in the matmuls, float32 softmax: within 3e-2 of
  the float64 result (relative to its largest value)."""
  x, seg = _inputs(3)
  m = _module(dtype=jnp.bfloat16, impl=impl)
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
    ("auto", "cpu", jnp.bfloat16, 64, "einsum"),  # XLA einsums laid out for XLA:CPU
    ("auto", "tpu", jnp.bfloat16, 64, "xla"),     # lengths unknown (0)
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


@pytest.mark.parametrize("q_len,dense_mask,want", [
    (2048, False, "splash"), (128, False, "splash"), (256, False, "splash"),
    (197, False, "xla"),            # ViT-B/16 tokens: not a multiple of 128
    (2048, True, "xla"),            # decode: the KV cache's dense mask
])
def test_auto_on_tpu_picks_splash_where_it_runs(q_len, dense_mask, want, caplog):
  caplog.set_level("INFO")
  layers._log_fallback.cache_clear()
  got = layers.resolve_attention_impl("auto", jnp.float32, 16, "tpu", q_len=q_len, kv_len=q_len,
                                      dense_mask=dense_mask)
  assert got == want
  if want == "xla":  # the reason is logged
    assert "XLA instead of splash" in caplog.text


def test_forced_splash_falls_back_where_it_cannot_run(caplog):
  """init's dummy length-8 batch and the decode cache take XLA, with a warning
  naming why; lengths that fit get the kernel on any platform."""
  layers._log_fallback.cache_clear()
  resolve = functools.partial(layers.resolve_attention_impl, "splash", jnp.bfloat16, 64, "cpu")
  assert resolve(q_len=256, kv_len=256) == "splash"
  assert resolve(q_len=8, kv_len=8) == "xla"
  assert "XLA instead of splash: query length 8 is not a multiple of 128" in caplog.text
  assert resolve(q_len=1, kv_len=2048, dense_mask=True) == "xla"
  assert "dense bool array" in caplog.text


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


@pytest.mark.parametrize("kv_heads,dense", [(0, False), (2, False), (1, True)])
def test_einsum_form_equals_the_library_form_with_gradients(kv_heads, dense):
  """attention_impl=einsum against jax.nn.dot_product_attention (the 'xla'
  impl) on the same params: outputs within 1e-6 and every gradient (params
  and input) within 1e-5 of the largest, for one, two and four query heads
  per kv head, with packed segments or a dense random mask."""
  x, seg = _inputs(6)
  if dense:
    mask = jnp.asarray(np.random.default_rng(6).random((B, 1, L, L)) > 0.4)
  else:
    mask = segment_mask(jnp.asarray(seg))
  outs, grads = {}, {}
  for impl in IMPLS:
    m = layers.Attention(H, D, causal=True, impl=impl, num_kv_heads=kv_heads)
    p = _params(m, x)
    apply = lambda p, x, m=m: m.apply({"params": p}, x, mask)
    outs[impl] = np.asarray(jax.jit(apply)(p, x))
    grads[impl] = jax.jit(jax.grad(lambda p, x, f=apply: jnp.sum(jnp.sin(f(p, x))),
                                   argnums=(0, 1)))(p, x)
  np.testing.assert_allclose(outs["einsum"], outs["xla"], atol=1e-6, rtol=0)
  scale = max(float(np.abs(g).max()) for g in jax.tree.leaves(grads["xla"]))
  for a, b in zip(jax.tree.leaves(grads["einsum"]), jax.tree.leaves(grads["xla"])):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-5 * scale)


def test_einsum_form_needs_fewer_transposes_on_cpu():
  """Why the einsum form exists: compiled for CPU (forward and backward),
  its plain 4-D products need fewer transposing copies than the library's
  vmapped grouped form, and the keys' gradient product stays a plain dot
  (Eigen; its left operand contracts the query axis, not its last), where
  every product of the library form is canonicalised for YNNPACK (left
  operand contracting its last axis)."""
  x, seg = _inputs()
  copies, contracting = {}, {}
  for impl in IMPLS:
    m = _module(impl=impl)
    p = _params(m, x)
    loss = lambda p, x, s, m=m: jnp.sum(jnp.sin(m.apply({"params": p}, x, segment_mask(s))))
    hlo = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(p, x, seg).compile().as_text()
    copies[impl] = len(re.findall(r"= \S+ (?:fusion|copy|transpose)\([^\n]*(?:transpose|copy)",
                                  hlo))
    contracting[impl] = re.findall(
        r"lhs_batch_dims=\{0,1\}, lhs_contracting_dims=\{(\d)\}", hlo)
  assert copies["einsum"] < copies["xla"], copies
  assert set(contracting["xla"]) == {"3"}, contracting
  assert "2" in contracting["einsum"], contracting


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


# ---- splash (TPU flash attention) in the Pallas interpreter ---------------------
SL = 256  # two 128-blocks: causal blocks skipped, partial blocks masked


def _splash_inputs(seed=0, b=2, e=E):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(b, SL, e)).astype(np.float32)
  # Row 0: three packed segments crossing the block edge; row 1: 40 padding
  # positions (segment 0) first, then one segment.
  seg = np.array([[1] * 100 + [2] * 60 + [3] * 96, [0] * 40 + [1] * 216], np.int32)[:b]
  return x, seg


def _splash_ref_mask(seg, causal):
  same = seg[:, :, None] == seg[:, None, :]
  if causal:
    same &= np.tril(np.ones((SL, SL), bool))[None]
  return same[:, None]


@pytest.mark.parametrize("causal", [True, False])
def test_splash_matches_float64_reference(causal):
  """Splash forward (interpreted on CPU): within 2e-5 of float64, as XLA."""
  x, seg = _splash_inputs()
  m = layers.Attention(H, D, causal=causal, impl="splash")
  p = _params(m, x)
  out = jax.jit(lambda p, x, s: m.apply({"params": p}, x, segment_mask(s)))(p, x, seg)
  ref = numpy_attention(x.astype(np.float64), jax.tree.map(np.float64, p),
                        _splash_ref_mask(seg, causal))
  np.testing.assert_allclose(np.asarray(out), ref, atol=2e-5, rtol=1e-5)


def test_splash_key_padding_of_the_text_encoder():
  """Bidirectional attention over `Segments.key_padding` (the text encoder's
  mask): row 0 pads its last 56 keys, row 1 has no valid key (an empty
  item: even weights, as XLA). Splash equals XLA within 2e-5, and XLA over the
  ids equals the float64 reference of the old [B, 1, 1, S] bool mask."""
  x, _ = _splash_inputs(7)
  valid = np.ones((2, SL), bool)
  valid[0, 200:] = False
  valid[1] = False
  outs = {}
  for impl in ("splash", "xla"):
    m = layers.Attention(H, D, causal=False, impl=impl)
    p = _params(m, x)
    outs[impl] = np.asarray(m.apply({"params": p}, x, layers.Segments.key_padding(valid)))
  assert np.isfinite(outs["splash"]).all()
  np.testing.assert_allclose(outs["splash"], outs["xla"], atol=2e-5, rtol=1e-5)
  full = np.broadcast_to(valid[:1, None, None, :], (1, 1, SL, SL))
  ref = numpy_attention(x[:1].astype(np.float64), jax.tree.map(np.float64, p), full)
  np.testing.assert_allclose(outs["xla"][:1], ref, atol=2e-5, rtol=1e-5)


def test_splash_gradients_match_xla():
  """The kernel's own backward (dq, dkv kernels) against XLA's autodiff of
  the dense path, float32: within 1e-4 of the largest gradient (the key bias
  has a zero gradient in exact arithmetic; both give only rounding there)."""
  x, seg = _splash_inputs(4)
  grads = {}
  for impl in ("splash", "xla"):
    m = layers.Attention(H, D, causal=True, impl=impl)
    p = _params(m, x)
    loss = lambda p, x, m=m: jnp.sum(jnp.sin(m.apply({"params": p}, x, segment_mask(seg))))
    grads[impl] = jax.jit(jax.grad(loss, argnums=(0, 1)))(p, x)
  scale = max(float(np.abs(g).max()) for g in jax.tree.leaves(grads["xla"]))
  for a, b in zip(jax.tree.leaves(grads["splash"]), jax.tree.leaves(grads["xla"])):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-4 * scale)


def test_splash_grouped_query_heads():
  """Grouped keys/values (4 query heads on 2 kv heads) read by the kernel
  directly: equal to the XLA path within 2e-5."""
  x, seg = _splash_inputs(5)
  outs = {}
  for impl in ("splash", "xla"):
    m = layers.Attention(H, D, causal=True, impl=impl, num_kv_heads=2)
    p = _params(m, x)
    outs[impl] = np.asarray(m.apply({"params": p}, x, segment_mask(jnp.asarray(seg))))
  np.testing.assert_allclose(outs["splash"], outs["xla"], atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("kv_heads", [0, 2])
def test_splash_sharded_in_shard_map_over_the_mesh(kv_heads):
  """Under the trainer's mesh (data 2 x fsdp 2 x tensor 2, logical rules):
  batch over data x fsdp, heads over tensor, one kernel per shard (grouped
  kv heads, which the rules replicate, copied per query head); equal to the
  unsharded XLA result within 2e-5."""
  from metalm_jax import presets
  from metalm_jax import sharding as shard_lib
  x, seg = _splash_inputs(6)
  x, seg = np.concatenate([x, x[::-1]]), np.concatenate([seg, seg[::-1]])  # batch 4
  ref_m = layers.Attention(H, D, causal=True, impl="xla", num_kv_heads=kv_heads)
  p = _params(ref_m, x)
  ref = np.asarray(ref_m.apply({"params": p}, x, segment_mask(jnp.asarray(seg))))
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:8]).reshape(2, 2, 2),
                           ("data", "fsdp", "tensor"))
  m = layers.Attention(H, D, causal=True, impl="splash", num_kv_heads=kv_heads)
  with shard_lib.mesh_rules(mesh, presets.logical_rules()):
    fn = jax.jit(lambda p, x, s: m.apply({"params": p}, x, segment_mask(s)))
    hlo = fn.lower(p, x, seg).as_text()
    out = np.asarray(fn(p, x, seg))
  assert "shard_map" in hlo or "sdy.manual_computation" in hlo
  np.testing.assert_allclose(out, ref, atol=2e-5, rtol=1e-5)
