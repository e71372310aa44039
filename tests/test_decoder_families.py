"""Decoder families (Llama, Qwen2, Gemma; metalm_jax/presets.py, decoder families):
the new pieces against independent float64 numpy references, the KV cache
against the full forward for each family, docking with Gemma's embedding
scale, remat, scanned layers, sharding and config checks.

Tolerances: float32 against float64 references 2e-5 absolute + 1e-4
relative (measured ~1e-6); cached decoding against the full forward 1e-5
absolute + 1e-5 relative (as tests/test_models.py)."""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import Mesh

from metalm_jax import batch as batch_lib
from metalm_jax import presets
from metalm_jax.models import layers, metalm, rotary
from metalm_jax.models.decoder import Decoder
from tests.model_fixtures import build, forward, random_batch, small_model_cfg, to_jnp

ATOL, RTOL = 2e-5, 1e-4
SMALL = dict(vocab_size=97, emb_dim=32, num_heads=4, mlp_dim=64, max_len=64)
LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 64}
FAMILY_KW = {
    # llama: heads 6 / kv 2 (not powers of two), Llama-3 scaling; theta 500 puts
    # head_dim 8's four wavelengths (6.3, 30, 140, 665) in all three regimes
    # of original_max_position_embeddings 64 (kept < 16 < interpolated < 64 < divided).
    "llama": dict(SMALL, emb_dim=48, num_heads=6, num_kv_heads=2, rope_theta=500.0,
                  rope_scaling=LLAMA3),
    "qwen2": dict(SMALL, num_kv_heads=1, tie_embeddings=True),
    "gemma": dict(SMALL, head_dim=24, num_kv_heads=1),
}


def _section(family, **kw):
  return presets.decoder_family(family, **{**FAMILY_KW[family], **kw})


def _init(section, seed=0, noise=0.05):
  """Decoder and params with every leaf perturbed (norm scales off 1 / 0)."""
  model = Decoder(ml_collections.FrozenConfigDict(section))
  t = np.zeros((1, 4), np.int32)
  params = nn.meta.unbox(model.init(jax.random.key(seed), t, t, t + 1)["params"])
  rng = np.random.default_rng(seed)
  params = jax.tree.map(
      lambda x: np.asarray(x) + noise * rng.standard_normal(x.shape).astype(np.float32), params)
  return model, params


def _tokens(vocab, b=2, length=20, seed=0):
  tok = np.random.default_rng(seed).integers(0, vocab, (b, length)).astype(np.int32)
  pos = np.broadcast_to(np.arange(length, dtype=np.int32), (b, length))
  return tok, np.ascontiguousarray(pos), np.ones((b, length), np.int32)


# ------------------------------------------------------ numpy references


def _rms(x, scale, eps, plus_one):
  y = x / np.sqrt((x ** 2).mean(-1, keepdims=True) + eps)
  return y * ((1.0 + scale) if plus_one else scale)


def _inv_freq_hf(head_dim, theta, scaling):
  """HF's _compute_llama3_parameters, re-derived in float64 numpy."""
  inv = 1.0 / theta ** (np.arange(0, head_dim, 2) / head_dim)
  if not scaling:
    return inv
  f, lo, hi, old = (scaling[k] for k in ("factor", "low_freq_factor", "high_freq_factor",
                                          "original_max_position_embeddings"))
  wavelen = 2 * np.pi / inv
  scaled = np.where(wavelen > old / lo, inv / f, inv)
  smooth = (old / wavelen - lo) / (hi - lo)
  smoothed = (1 - smooth) * scaled / f + smooth * scaled
  medium = ~(wavelen < old / hi) & ~(wavelen > old / lo)
  return np.where(medium, smoothed, scaled)


def _rope_np(x, pos, inv):
  """rotate_half form: x * cos + rotate_half(x) * sin with cos/sin over [freqs, freqs]."""
  ang = pos[..., None, None] * np.concatenate([inv, inv])
  half = x.shape[-1] // 2
  rot = np.concatenate([-x[..., half:], x[..., :half]], -1)
  return x * np.cos(ang) + rot * np.sin(ang)


def _gqa_np(x, p, pos, inv, qkv_bias):
  """Causal grouped-query attention with rotary, as HF (repeat_kv)."""
  def proj(name):
    y = np.einsum("bte,ehd->bthd", x, p[name]["kernel"])
    return y + p[name]["bias"] if qkv_bias else y
  q, k, v = proj("query"), proj("key"), proj("value")
  q, k = _rope_np(q, pos, inv), _rope_np(k, pos, inv)
  rep = q.shape[2] // k.shape[2]
  k, v = np.repeat(k, rep, axis=2), np.repeat(v, rep, axis=2)
  s = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
  t = x.shape[1]
  s = np.where(np.tril(np.ones((t, t), bool)), s, -np.inf)
  w = np.exp(s - s.max(-1, keepdims=True))
  w /= w.sum(-1, keepdims=True)
  return np.einsum("bqhd,hde->bqe", np.einsum("bhqk,bkhd->bqhd", w, v), p["out"]["kernel"])


ACT_NP = {
    "silu": lambda h: h / (1 + np.exp(-h)),
    "gelu_tanh": lambda h: 0.5 * h * (1 + np.tanh(np.sqrt(2 / np.pi) * (h + 0.044715 * h ** 3))),
}


def _decoder_np(section, p, tokens, pos):
  """The whole family decoder in float64 numpy (pre-norm, gated MLP, tied/untied)."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), p)
  plus_one = section.norm_type == "rms_plus_one"
  hd = section.head_dim or section.emb_dim // section.num_heads
  inv = _inv_freq_hf(hd, section.rope_theta, section.rope_scaling.to_dict())
  x = p["embedder"]["embedding"][tokens] * section.embed_scale
  act = ACT_NP[section.activation]
  for i in range(section.num_layers):
    lp = p[f"layers_{i}"]
    x = x + _gqa_np(_rms(x, lp["ln_attn"]["scale"], section.ln_eps, plus_one), lp["attn"], pos,
                    inv, section.qkv_bias)
    h = _rms(x, lp["ln_mlp"]["scale"], section.ln_eps, plus_one)
    m = lp["mlp"]
    x = x + (act(h @ m["wi_gate"]["kernel"]) * (h @ m["wi_up"]["kernel"])) @ m["wo"]["kernel"]
  x = _rms(x, p["final_norm"]["scale"], section.ln_eps, plus_one)
  if section.tie_embeddings:
    return x @ p["embedder"]["embedding"].T
  return x @ p["lm_head"]["kernel"]


# ------------------------------------------------------------------ tests


@pytest.mark.parametrize("plus_one", [False, True])
def test_rms_norm_matches_numpy(plus_one):
  norm = layers.NORM_TYPES.get("rms_plus_one" if plus_one else "rms")(1e-6, jnp.float32)
  x = np.random.default_rng(0).normal(size=(2, 3, 16)).astype(np.float32)
  v = norm.init(jax.random.key(0), x)
  init_scale = np.asarray(nn.meta.unbox(v["params"])["scale"])
  assert (init_scale == (0.0 if plus_one else 1.0)).all()  # both start as the identity scale
  scale = np.random.default_rng(1).normal(size=16).astype(np.float32)
  out = np.asarray(norm.apply({"params": {"scale": scale}}, x))
  np.testing.assert_allclose(out, _rms(x.astype(np.float64), scale, 1e-6, plus_one),
                             atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("head_dim,theta,scaling", [(16, 10000.0, {}), (24, 500.0, LLAMA3),
                                                    (8, 1e6, LLAMA3)])
def test_rotary_matches_hf_formula(head_dim, theta, scaling):
  """Inverse frequencies (Llama-3 scaling) and the rotate-half rotation,
  against HF's formulas in float64 numpy."""
  ref_inv = _inv_freq_hf(head_dim, theta, scaling)
  np.testing.assert_allclose(rotary.inverse_frequencies(head_dim, theta, scaling), ref_inv,
                             rtol=1e-12)
  if head_dim == 24:  # kept, interpolated and divided frequencies all occur
    ratio = ref_inv / _inv_freq_hf(head_dim, theta, {})
    assert (ratio == 1).any() and np.isclose(ratio, 1 / 8).any()
    assert ((ratio > 1 / 8 + 1e-9) & (ratio < 1 - 1e-9)).any()
  x = np.random.default_rng(0).normal(size=(2, 5, 3, head_dim)).astype(np.float32)
  pos = np.array([[0, 1, 2, 40, 63], [7, 3, 9, 100, 200]], np.int32)
  scale = rotary.frequency_scale(head_dim, theta, scaling)
  out = np.asarray(layers.apply_rotary(x, pos, theta, scale))
  ref = _rope_np(x.astype(np.float64), pos.astype(np.float64), ref_inv)
  # float32 angles: |error| up to ~200 * 2^-24 rad at position 200
  np.testing.assert_allclose(out, ref, atol=1e-4, rtol=0)


def test_default_rotary_is_the_old_formula_bit_for_bit():
  """theta 10000 without scaling: the same float32 operations as before the
  family fields (the inverse frequencies written out as the old code did)."""
  x = np.random.default_rng(0).normal(size=(2, 6, 2, 8)).astype(np.float32)
  pos = np.arange(12, dtype=np.int32).reshape(2, 6)
  inv = 1.0 / (10000.0 ** (jnp.arange(4, dtype=jnp.float32) / 4))
  ang = pos[..., None].astype(jnp.float32) * inv
  sin, cos = jnp.sin(ang)[:, :, None, :], jnp.cos(ang)[:, :, None, :]
  x1, x2 = x[..., :4], x[..., 4:]
  old = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  np.testing.assert_array_equal(np.asarray(layers.apply_rotary(x, pos)), np.asarray(old))


@pytest.mark.parametrize("family", sorted(FAMILY_KW))
def test_family_decoder_matches_numpy(family):
  section = _section(family, num_layers=2)
  model, params = _init(section, seed=3)
  tok, pos, seg = _tokens(section.vocab_size, length=12)
  pos = pos + np.array([[0], [50]], np.int32)  # the second row far into the rope range
  out = np.asarray(jax.jit(model.apply)({"params": params}, tok, pos, seg))
  ref = _decoder_np(section, params, tok, pos)
  np.testing.assert_allclose(out, ref, atol=ATOL, rtol=RTOL)
  assert np.abs(ref).max() > 0.1


def test_family_param_shapes_and_logical_axes():
  sec = _section("gemma")
  v = Decoder(ml_collections.FrozenConfigDict(sec)).init(
      jax.random.key(0), *(np.zeros((1, 4), np.int32),) * 2, np.ones((1, 4), np.int32))
  attn = v["params"]["layers_0"]["attn"]
  assert attn["query"]["kernel"].value.shape == (32, 4, 24)  # head_dim independent of emb/heads
  assert attn["key"]["kernel"].value.shape == (32, 1, 24)
  assert attn["key"]["kernel"].names == ("embed", "kv_heads", "kv")
  assert attn["query"]["kernel"].names == ("embed", "heads", "kv")
  assert "bias" not in attn["query"] and "lm_head" not in v["params"]
  assert set(v["params"]["layers_0"]["mlp"]) == {"wi_gate", "wi_up", "wo"}
  assert set(v["params"]["final_norm"]) == {"scale"}
  qwen = Decoder(ml_collections.FrozenConfigDict(_section("qwen2", num_kv_heads=4))).init(
      jax.random.key(0), *(np.zeros((1, 4), np.int32),) * 2, np.ones((1, 4), np.int32))
  qa = qwen["params"]["layers_0"]["attn"]
  assert "bias" in qa["query"] and "bias" in qa["value"] and "bias" not in qa["out"]
  assert qa["key"]["kernel"].names == ("embed", "heads", "kv")  # K == N: the MHA names


def test_missing_family_fields_mean_the_gpt2_shape():
  """A decoder section written before the family fields (an old run's
  config.json) builds the same model as presets.decoder()'s defaults."""
  full = presets.decoder(**SMALL, positions="rotary")
  old = ml_collections.ConfigDict({k: v for k, v in full.to_dict().items() if k not in (
      "norm_type", "mlp", "num_kv_heads", "qkv_bias", "rope_theta", "rope_scaling",
      "embed_scale")})
  model, params = _init(full)
  tok, pos, seg = _tokens(97, length=8)
  a = model.apply({"params": params}, tok, pos, seg)
  b = Decoder(ml_collections.FrozenConfigDict(old)).apply({"params": params}, tok, pos, seg)
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("family,scan", [("llama", False), ("qwen2", False), ("gemma", False),
                                         ("llama", True)])
def test_kv_cache_step_by_step_equals_full_forward(family, scan):
  """One token per decode step from position 0 (grouped KV cache, rotary at
  every position), left padding in row 1, against the full forward."""
  section = _section(family, scan_layers=scan)
  model, params = _init(section, seed=1)  # scanned: params stacked by init
  length = 14
  tok, _, seg = _tokens(section.vocab_size, length=length, seed=2)
  seg[1, :3] = 0
  pos = np.maximum(np.cumsum(seg, 1) - 1, 0).astype(np.int32)
  full = np.asarray(jax.jit(model.apply)({"params": params}, tok, pos, seg))
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), tok, pos, seg, decode=True))
  cache = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes["cache"])
  kv = section.num_kv_heads
  key_shapes = [x.shape for p, x in jax.tree_util.tree_leaves_with_path(cache)
                if "cached_key" in jax.tree_util.keystr(p)]
  # The cache holds K heads, laid out [..., K, cache_len, head_dim].
  assert key_shapes and all(s[-3] == kv and s[-2] == length for s in key_shapes)
  step = jax.jit(lambda c, t, p, s: model.apply({"params": params, "cache": c}, t, p, s,
                                                decode=True, mutable=["cache"]))
  outs = []
  for t in range(length):
    logits, mut = step(cache, tok[:, t:t + 1], pos[:, t:t + 1], seg[:, t:t + 1])
    cache = mut["cache"]
    outs.append(np.asarray(logits))
  inc = np.concatenate(outs, 1)
  real = seg > 0
  np.testing.assert_allclose(inc[real], full[real], atol=1e-5, rtol=1e-5)


def test_gemma_docking_scales_text_not_connector_outputs():
  """MetaLM with a Gemma decoder: token positions get embedding * sqrt(d),
  docked positions the connector output as it is (PaliGemma's choice);
  prefill + cached steps equal the full forward with docked spans."""
  cfg = small_model_cfg("rotary", **{k: v for k, v in presets.gemma(
      emb_dim=32, num_heads=4, head_dim=16, num_kv_heads=2).items()
      if k in ("norm_type", "mlp", "activation", "use_bias", "tie_embeddings", "ln_eps",
               "num_kv_heads", "head_dim", "embed_scale", "rope_theta")})
  assert cfg.decoder.embed_scale == pytest.approx(math.sqrt(32))
  model, v = build(cfg)
  b = random_batch(model)
  emb = forward(model, v, b, method=metalm.MetaLM.input_embeddings)
  table = np.asarray(nn.meta.unbox(v["params"])["decoder"]["embedder"]["embedding"])
  dock = b["dock_mask"]
  np.testing.assert_allclose(emb[~dock], table[b["tokens"][~dock]] * math.sqrt(32), rtol=1e-6)
  flat = forward(model, v, {"encoders": b["encoders"]}, method=lambda m, x: m.dock_vectors(
      x["encoders"]))
  want = np.take_along_axis(flat, b["dock_index"][..., None], axis=1)
  np.testing.assert_allclose(emb[dock], want[dock], rtol=1e-6)

  full = forward(model, v, b)
  P, L = 16, b["tokens"].shape[1]
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), to_jnp(b), decode=True))["cache"]
  cache = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
  prompt = {k: (x[:, :P] if k in batch_lib.DECODER_KEYS else x) for k, x in b.items()}
  logits, mut = jax.jit(lambda c, x: model.apply({"params": v["params"], "cache": c}, x,
                                                 decode=True, mutable=["cache"]))(cache,
                                                                                  to_jnp(prompt))
  steps = [np.asarray(logits)]
  step = jax.jit(lambda c, t, p, s: model.apply({"params": v["params"], "cache": c}, t, p, s,
                                                method=metalm.MetaLM.decode_tokens,
                                                mutable=["cache"]))
  for t in range(P, L):
    logits, mut = step(mut["cache"], b["tokens"][:, t:t + 1], b["positions"][:, t:t + 1],
                       b["segment_ids"][:, t:t + 1])
    steps.append(np.asarray(logits))
  real = b["segment_ids"] > 0
  np.testing.assert_allclose(np.concatenate(steps, 1)[real], full[real], atol=1e-5, rtol=1e-5)


def test_embed_scale_is_rounded_in_the_compute_dtype():
  """bfloat16: sqrt(2048) = 45.2548... is applied as 45.25, as HF's Gemma does."""
  sec = presets.gemma(vocab_size=11, emb_dim=2048, num_layers=1, num_heads=1, mlp_dim=8)
  model = Decoder(ml_collections.FrozenConfigDict(sec), jnp.bfloat16)
  tok = np.arange(4, dtype=np.int32)[None]
  v = model.init(jax.random.key(0), tok, method=Decoder.embed)
  out = np.asarray(model.apply(v, tok, method=Decoder.embed), np.float32)
  table = np.asarray(nn.meta.unbox(v["params"])["embedder"]["embedding"])
  raw = np.asarray(jnp.asarray(table[:4], jnp.bfloat16), np.float32)
  np.testing.assert_array_equal(out[0], np.asarray(jnp.asarray(raw * 45.25, jnp.bfloat16),
                                                   np.float32))


def test_remat_gradients_equal_no_remat_for_gated_gqa(policy="save_mlp_hidden"):
  """The named save of both gated-MLP hidden pre-activations; the other
  policies wrap the same Block (tests/test_remat.py)."""
  base = _section("llama", scan_layers=True)
  _, params = _init(_section("llama"), seed=4)
  from metalm_jax.models import layout
  params = layout.stack(params)
  tok, pos, seg = _tokens(97, length=10)

  def grads(section):
    model = Decoder(ml_collections.FrozenConfigDict(section))
    loss = lambda p: jnp.mean(jax.nn.log_softmax(model.apply({"params": p}, tok, pos, seg))[..., 0])
    return jax.jit(jax.grad(loss))(params)

  ref = grads(base)
  got = grads(ml_collections.ConfigDict({**base.to_dict(), "remat_policy": policy}))
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(ref)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6, rtol=1e-5)


def test_sharded_gqa_equals_single_device():
  """Llama family on the 2x2x2 (data, fsdp, tensor) mesh with the default
  rules: kv heads (2) replicated (`kv_heads` is unmapped), query heads over
  tensor; logits equal the single-device ones."""
  section = _section("llama", num_heads=4, emb_dim=32, num_kv_heads=2, vocab_size=96)
  model, params = _init(section, seed=5)
  tok, pos, seg = _tokens(96, b=4, length=8)
  ref = np.asarray(jax.jit(model.apply)({"params": params}, tok, pos, seg))
  mesh = Mesh(np.asarray(jax.devices()[:8]).reshape(2, 2, 2), ("data", "fsdp", "tensor"))
  rules = presets.logical_rules()
  abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), tok, pos, seg))
  shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(abstract), mesh, rules)["params"]
  p = jax.device_put(params, shardings)
  spec = lambda x: tuple(x.sharding.spec) + (None,) * (x.ndim - len(x.sharding.spec))
  assert spec(p["layers_0"]["attn"]["query"]["kernel"]) == ("fsdp", "tensor", None)
  assert spec(p["layers_0"]["attn"]["key"]["kernel"]) == ("fsdp", None, None)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    out = np.asarray(jax.jit(model.apply)({"params": p}, tok, pos, seg))
  np.testing.assert_allclose(out, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("field,value,match", [
    ("num_kv_heads", 3, "model.decoder.num_kv_heads=3"),
    ("norm_type", "batch", "model.decoder.norm_type='batch'"),
    ("mlp", "moe", "model.decoder.mlp='moe'"),
    ("rope_scaling", {"rope_type": "yarn", "factor": 2.0}, "rope_scaling.rope_type='yarn'"),
    ("rope_scaling", {"rope_type": "llama3", "factor": 8.0}, "missing"),
    ("embed_scale", 0.0, "model.decoder.embed_scale=0.0"),
])
def test_bad_family_fields_are_refused_by_name(field, value, match):
  cfg = presets.model_config("tiny")
  cfg.encoders = {}
  cfg.decoder = presets.llama()
  cfg.decoder[field] = value
  with pytest.raises(ValueError, match=match):
    metalm.build_model(cfg)


def test_rope_scaling_needs_rotary_and_families_are_registered():
  cfg = presets.model_config("tiny")
  cfg.decoder.rope_scaling = LLAMA3
  with pytest.raises(ValueError, match="needs positions='rotary'"):
    metalm.build_model(cfg)
  assert set(presets.FAMILIES) >= {"gpt2", "llama", "qwen2", "gemma"}
  with pytest.raises(KeyError, match="unknown decoder family 'mistral'"):
    presets.decoder_family("mistral")
  assert presets.gemma(emb_dim=256).embed_scale == 16.0
  assert presets.decoder_family("gpt2").to_dict() == presets.decoder(
      activation="gelu_new").to_dict()
