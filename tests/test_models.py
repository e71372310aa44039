"""Model core: decoder variants' causality, bidirectionality, padding, KV
cache and paper-size parameter counts. Causality, docking, padding and
sharding for every registered modality: tests/test_model_properties.py."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metalm_jax import batch as batch_lib
from metalm_jax import presets
from metalm_jax.models import metalm
from metalm_jax.models.decoder import Decoder
from metalm_jax.models.text_encoder import TextEncoder
from metalm_jax.models.vision import VisionEncoder
from tests.model_fixtures import build, forward, random_batch, small_model_cfg, to_jnp

ATOL = 1e-5  # float32, tiny widths: observed differences are ~1e-7


# learned positions / pre-LN (the default decoder): tests/test_model_properties.py
@pytest.mark.parametrize("positions,norm", [("sinusoidal", "deepnorm"), ("rotary", "pre")])
def test_decoder_is_causal(positions, norm):
  model, v = build(small_model_cfg(positions, norm))
  b = random_batch(model, dock=True)
  out = forward(model, v, b)
  t = 15
  b2 = {**b, "tokens": b["tokens"].copy()}
  b2["tokens"][:, t + 1:] = (b2["tokens"][:, t + 1:] + 7) % model.cfg.decoder.vocab_size
  out2 = forward(model, v, b2)
  np.testing.assert_allclose(out2[:, :t + 1], out[:, :t + 1], atol=ATOL)
  assert np.abs(out2[:, t + 1:] - out[:, t + 1:]).max() > 1e-3  # later positions do change


def test_text_encoder_is_bidirectional_and_ignores_padding():
  cfg = small_model_cfg().encoders.text
  enc = TextEncoder(cfg)
  rng = np.random.default_rng(1)
  tokens = rng.integers(0, 97, (2, 6)).astype(np.int32)
  mask = np.array([[1, 1, 1, 1, 0, 0]] * 2, bool)
  p = enc.init(jax.random.key(0), tokens, mask)
  out = np.asarray(enc.apply(p, tokens, mask))
  late = tokens.copy()
  late[:, 3] = (late[:, 3] + 1) % 97
  out_late = np.asarray(enc.apply(p, late, mask))
  assert np.abs(out_late[:, 0] - out[:, 0]).max() > 1e-4  # early position sees a late token
  padded = tokens.copy()
  padded[:, 4:] = (padded[:, 4:] + 5) % 97
  out_pad = np.asarray(enc.apply(p, padded, mask))
  np.testing.assert_allclose(out_pad[:, :4], out[:, :4], atol=ATOL)


def test_vision_encoder_is_bidirectional():
  cfg = small_model_cfg().encoders.vision
  enc = VisionEncoder(cfg)
  px = np.random.default_rng(2).normal(size=(1, 16, 16, 3)).astype(np.float32)
  p = enc.init(jax.random.key(0), px)
  out = np.asarray(enc.apply(p, px))
  assert out.shape == (1, batch_lib.slot_length(cfg), cfg.emb_dim)
  px2 = px.copy()
  px2[:, 8:, 8:] += 1.0  # only the last patch changes
  out2 = np.asarray(enc.apply(p, px2))
  assert np.abs(out2[:, :4] - out[:, :4]).max() > 1e-4


def test_decoder_padding_does_not_change_real_positions():
  model, v = build(small_model_cfg())
  b = random_batch(model, dock=False, left_pad=(0, 0))
  out = forward(model, v, b)
  # Same content, with 5 extra padding positions on the left (positions restart at 0).
  pad = 5
  bp = batch_lib.dummy_batch(model.cfg, 2, 24 + pad)
  for k in ("tokens", "segment_ids", "positions"):
    bp[k][:, pad:] = b[k]
  bp["tokens"][:, :pad] = 3
  outp = forward(model, v, bp)
  np.testing.assert_allclose(outp[:, pad:], out, atol=ATOL)


def test_packed_segments_do_not_attend_across():
  model, v = build(small_model_cfg())
  b = random_batch(model, dock=False, left_pad=(0, 0))
  seg = np.ones_like(b["segment_ids"])
  seg[:, 10:] = 2
  pos = np.concatenate([np.arange(10), np.arange(14)])[None].repeat(2, 0).astype(np.int32)
  packed = {**b, "segment_ids": seg, "positions": pos}
  out = forward(model, v, packed)
  alone = batch_lib.dummy_batch(model.cfg, 2, 14)
  alone["tokens"] = b["tokens"][:, 10:]
  alone["segment_ids"][:] = 1
  alone["positions"] = pos[:, 10:]
  out_alone = forward(model, v, alone)
  np.testing.assert_allclose(out[:, 10:], out_alone, atol=ATOL)


@pytest.mark.parametrize("positions,scan", [("learned", False), ("sinusoidal", False),
                                            ("rotary", False), ("learned", True)])
def test_kv_cache_matches_full_forward(positions, scan):
  """Prefill + one-token steps equal the full forward; also with scanned
  decoder layers (cache stacked on axis 1)."""
  cfg = small_model_cfg(positions)
  cfg.decoder.scan_layers = scan
  model, v = build(cfg)
  L, P = 24, 16
  b = random_batch(model, l=L)  # row 1 is left-padded; image + text docked in the prompt
  full = forward(model, v, b)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), to_jnp(b), decode=True))["cache"]
  cache = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
  prompt = {k: (b[k][:, :P] if k in batch_lib.DECODER_KEYS else b[k]) for k in b}
  prefill = jax.jit(lambda p, c, x: model.apply({"params": p, "cache": c}, x, decode=True,
                                                 mutable=["cache"]))
  step = jax.jit(lambda p, c, tok, pos, seg: model.apply(
      {"params": p, "cache": c}, tok, pos, seg, method=metalm.MetaLM.decode_tokens,
      mutable=["cache"]))
  logits, mut = prefill(v["params"], cache, to_jnp(prompt))
  steps = [np.asarray(logits)]
  for t in range(P, L):
    logits, mut = step(v["params"], mut["cache"], b["tokens"][:, t:t + 1],
                       b["positions"][:, t:t + 1], b["segment_ids"][:, t:t + 1])
    steps.append(np.asarray(logits))
  inc = np.concatenate(steps, axis=1)
  real = b["segment_ids"] > 0
  np.testing.assert_allclose(inc[real], full[real], atol=ATOL, rtol=1e-5)


def test_no_docking_equals_plain_decoder():
  model, v = build(small_model_cfg())
  b = random_batch(model, dock=False)
  out = forward(model, v, b)
  dec = Decoder(model.cfg.decoder)
  plain = jax.jit(dec.apply)({"params": v["params"]["decoder"]}, b["tokens"], b["positions"],
                             b["segment_ids"])
  np.testing.assert_allclose(out, np.asarray(plain), atol=1e-6, rtol=0)


PAPER = {  # paper: VL decoder ~353M (GPT-2 medium); language decoder ~1.3B, encoder ~366M
    "paper_vl": {"decoder": 353e6},
    "paper_lang": {"decoder": 1.3e9, "encoders_text": 366e6},
}


@pytest.mark.parametrize("size", sorted(PAPER))
def test_paper_parameter_counts(size):
  model = metalm.build_model(presets.model_config(size))
  shapes = metalm.abstract_variables(model)["params"]
  for part, expected in PAPER[size].items():
    n = metalm.count_params(shapes[part])
    assert abs(n - expected) / expected < 0.05, (part, n, expected)


def test_bad_model_config_names_the_field():
  cfg = small_model_cfg()
  cfg.decoder.num_heads = 5
  with pytest.raises(ValueError, match="model.decoder.num_heads"):
    metalm.build_model(cfg)
  cfg = small_model_cfg()
  cfg.encoders.vision.connector.type = "qformer"
  with pytest.raises(ValueError, match="model.encoders.vision.connector.type"):
    metalm.build_model(cfg)
  cfg = small_model_cfg()
  cfg.encoders.vision.image_size = 20
  with pytest.raises(ValueError, match="image_size=20"):
    metalm.build_model(cfg)
