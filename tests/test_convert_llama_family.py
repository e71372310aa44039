"""Llama / Qwen2 / Gemma <-> our decoder (metalm_jax/convert/hf_llama_like.py).

HF -> ours: logit parity on random small models built offline (every weight
perturbed), rel = max|ours - ref| / max|ref| <= 1e-4 in float32, with
unusual shapes (one kv head, 6 heads over 3 or 2 kv heads, head_dim apart
from hidden / heads), rope_theta other than 10000, Llama-3 rope scaling,
tied and untied heads; scanned import; refusals naming the HF field.
Ours -> HF -> ours: bit-exact, HF's logits equal ours (same tolerance).
"""
import json
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import jax  # noqa: E402
import flax.linen as nn  # noqa: E402
import ml_collections  # noqa: E402

from metalm_jax import params_io  # noqa: E402
from metalm_jax.convert import __main__ as cli  # noqa: E402
from metalm_jax.convert import hf, hf_common, hf_export, hf_gpt2  # noqa: E402
from metalm_jax import presets  # noqa: E402
from metalm_jax.models import layout  # noqa: E402
from metalm_jax.models.decoder import Decoder  # noqa: E402
from tests.hf_fixtures import RTOL, assert_same_params, save_hf  # noqa: E402

LLAMA3 = {"rope_type": "llama3", "rope_theta": 500.0, "factor": 8.0, "low_freq_factor": 1.0,
          "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
BASE = dict(vocab_size=89, num_hidden_layers=2, max_position_embeddings=256)
CASES = {
    # head_dim 8, theta 500: wavelengths 6.3 / 30 / 140 / 665 fall in Llama-3's
    # kept / interpolated / divided / divided bands (original length 64).
    "llama-6h3kv-llama3-untied": ("llama", dict(BASE, hidden_size=48, intermediate_size=80,
                                                num_attention_heads=6, num_key_value_heads=3,
                                                rope_parameters=LLAMA3)),
    "llama-1kv-hd12-biases-tied": ("llama", dict(BASE, hidden_size=32, intermediate_size=64,
                                                 num_attention_heads=4, num_key_value_heads=1,
                                                 head_dim=12, attention_bias=True,
                                                 mlp_bias=True, tie_word_embeddings=True)),
    "qwen2-6h2kv-theta1e6-tied": ("qwen2", dict(BASE, hidden_size=48, intermediate_size=96,
                                                num_attention_heads=6, num_key_value_heads=2,
                                                rope_parameters={"rope_type": "default",
                                                                 "rope_theta": 1e6},
                                                tie_word_embeddings=True)),
    "qwen2-mha-untied": ("qwen2", dict(BASE, hidden_size=32, intermediate_size=64,
                                       num_attention_heads=4, num_key_value_heads=4,
                                       tie_word_embeddings=False)),
    "gemma-1kv-hd24-tied": ("gemma", dict(BASE, hidden_size=32, intermediate_size=64,
                                          num_attention_heads=4, num_key_value_heads=1,
                                          head_dim=24)),
    "gemma-6h2kv-theta2e4-untied": ("gemma", dict(BASE, hidden_size=48, intermediate_size=64,
                                                  num_attention_heads=6, num_key_value_heads=2,
                                                  head_dim=16, tie_word_embeddings=False,
                                                  rope_parameters={"rope_type": "default",
                                                                   "rope_theta": 2e4})),
}
HF_CLASSES = {"llama": ("LlamaConfig", "LlamaForCausalLM"),
              "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"),
              "gemma": ("GemmaConfig", "GemmaForCausalLM")}


def _hf_model(family, kw):
  cfg_cls, model_cls = HF_CLASSES[family]
  return getattr(transformers, model_cls)(getattr(transformers, cfg_cls)(**kw))


def _save_case(tmp_path, name):
  family, kw = CASES[name]
  return save_hf(_hf_model(family, kw), tmp_path / name, seed=len(name))


@pytest.mark.parametrize("name", sorted(CASES))
def test_parity(tmp_path, name):
  d = _save_case(tmp_path, name)
  r = hf.check_hf(d, "decoder", seed=1, batch=3)
  assert r["ok"] and r["rel"] <= RTOL and r["max_ref"] > 0.1, r
  assert r["hf_model_type"] == CASES[name][0]
  imp = hf.load_hf(d, "decoder")
  assert imp.skipped == []
  kw = CASES[name][1]
  assert imp.section.num_kv_heads == kw["num_key_value_heads"]
  assert imp.section.tie_embeddings == ("lm_head" not in imp.tree)


def test_scanned_import_gives_the_same_logits(tmp_path):
  d = _save_case(tmp_path, "llama-6h3kv-llama3-untied")
  unrolled = hf.load_hf(d, "decoder")
  stacked = hf.load_hf(d, "decoder", scan_layers=True)
  assert stacked.section.scan_layers and "layers" in stacked.tree
  assert stacked.tree["layers"]["attn"]["key"]["kernel"].shape == (2, 48, 3, 8)
  tokens = {"tokens": np.random.default_rng(0).integers(0, 89, (2, 20)).astype(np.int32)}
  a = hf_common.decoder_logits(unrolled.section, unrolled.tree, tokens)
  b = hf_common.decoder_logits(stacked.section, stacked.tree, tokens)
  np.testing.assert_allclose(a, b, atol=1e-6, rtol=0)
  r = hf.check_hf(d, "decoder", seed=2, batch=2, scan_layers=True)
  assert r["ok"], r


def test_parity_is_sensitive_to_the_rope_settings(tmp_path):
  """Dropping the Llama-3 scaling, or theta back to 10000, breaks parity by
  far more than the tolerance: the parity tests do check them."""
  d = _save_case(tmp_path, "llama-6h3kv-llama3-untied")
  imp = hf.load_hf(d, "decoder")
  conv = hf.converter_for("llama", "decoder")
  inputs = conv.random_inputs(imp.section, np.random.default_rng(1), 2)
  ref, valid = conv.run_hf(d, inputs)
  for change in ({"rope_scaling": {}}, {"rope_theta": 10000.0}):
    section = ml_collections.ConfigDict({**imp.section.to_dict(), **change})
    rel = hf.compare(conv.run_ours(section, imp.tree, inputs), ref, valid)["rel"]
    assert rel > 100 * RTOL, (change, rel)


def test_transformers_4_config_fields_import_the_same(tmp_path):
  """A config.json with rope_theta / rope_scaling (as Llama 3.1 checkpoints
  carry them) instead of rope_parameters gives the same section."""
  d = _save_case(tmp_path, "llama-6h3kv-llama3-untied")
  new = hf.load_hf(d, "decoder").section
  path = os.path.join(d, "config.json")
  with open(path) as f:
    cfg = json.load(f)
  rope = cfg.pop("rope_parameters")
  cfg["rope_theta"] = rope.pop("rope_theta")
  cfg["rope_scaling"] = rope
  with open(path, "w") as f:
    json.dump(cfg, f)
  old = hf.load_hf(d, "decoder").section
  assert old.to_dict() == new.to_dict()
  assert new.rope_theta == 500.0 and new.rope_scaling.to_dict() == {
      k: v for k, v in LLAMA3.items() if k != "rope_theta"}


def _config_dir(tmp_path, cfg):
  d = tmp_path / "cfg"
  cfg.save_pretrained(str(d))
  return str(d)


@pytest.mark.parametrize("cfg_cls,kw,match", [
    ("Qwen2Config", dict(use_sliding_window=True, sliding_window=16, max_window_layers=1,
                         num_hidden_layers=2), "use_sliding_window=True"),
    ("LlamaConfig", dict(rope_parameters={"rope_type": "linear", "rope_theta": 1e4,
                                          "factor": 2.0}),
     r"rope_parameters.rope_type .*='linear'"),
    ("LlamaConfig", dict(attention_bias=True, mlp_bias=False), "mlp_bias=False"),
    ("LlamaConfig", dict(mlp_bias=True), "mlp_bias=True"),
    ("LlamaConfig", dict(hidden_act="tanh"), "hidden_act='tanh'"),
    ("GemmaConfig", dict(attention_bias=True), "attention_bias=True"),
    ("GemmaConfig", dict(use_bidirectional_attention=True), "use_bidirectional_attention=True"),
    ("Gemma2Config", dict(), "model_type='gemma2'.*attn_logit_softcapping=50.0"),
])
def test_unsupported_configs_are_refused_by_field(tmp_path, cfg_cls, kw, match):
  base = dict(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
              num_attention_heads=4, num_key_value_heads=2)
  d = _config_dir(tmp_path, getattr(transformers, cfg_cls)(**{**base, **kw}))
  with pytest.raises(ValueError, match=match):
    hf.load_hf(d, "decoder")


def test_partial_rotary_is_refused(tmp_path):
  d = _config_dir(tmp_path, transformers.LlamaConfig(
      vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
      num_attention_heads=4))
  path = os.path.join(d, "config.json")
  with open(path) as f:
    cfg = json.load(f)
  cfg["rope_parameters"]["partial_rotary_factor"] = 0.5
  with open(path, "w") as f:
    json.dump(cfg, f)
  with pytest.raises(ValueError, match="partial_rotary_factor=0.5"):
    hf.load_hf(d, "decoder")


# ------------------------------------------------------------------ export

EXPORT = {"llama": dict(num_heads=6, emb_dim=48, num_kv_heads=2, rope_theta=500.0,
                        rope_scaling={k: v for k, v in LLAMA3.items() if k != "rope_theta"}),
          "qwen2": dict(num_kv_heads=1, tie_embeddings=True),
          "gemma": dict(head_dim=24, num_kv_heads=1)}


def _ours(family, seed, **kw):
  section = presets.decoder_family(family, **{**dict(vocab_size=67, emb_dim=32, num_heads=4,
                                                     mlp_dim=64, max_len=128),
                                              **EXPORT[family], **kw})
  model = Decoder(ml_collections.FrozenConfigDict(section))
  t = np.zeros((1, 4), np.int32)
  params = nn.meta.unbox(model.init(jax.random.key(seed), t, t, t + 1)["params"])
  rng = np.random.default_rng(seed)  # norms and biases off their init values
  params = jax.tree.map(lambda x: np.asarray(x) + 0.05 * rng.standard_normal(x.shape).astype(
      np.float32), params)
  return section, model, params


@pytest.mark.parametrize("family", sorted(EXPORT))
def test_export_round_trip_and_hf_logits(tmp_path, family):
  section, model, params = _ours(family, seed=len(family))
  assert hf_export.family_of(section) == family
  scan = family == "llama"  # export from the stacked layout too
  tree = layout.stack(params) if scan else params
  got_family, out = hf_export.save_hf_decoder(str(tmp_path / family), section, tree)
  assert got_family == family
  hf_model = getattr(transformers, HF_CLASSES[family][1]).from_pretrained(out).eval()
  tokens = np.random.default_rng(0).integers(0, 67, (2, 24)).astype(np.int32)
  ours = hf_common.decoder_logits(section, params, {"tokens": tokens})
  with torch.no_grad():
    ref = hf_model(input_ids=torch.from_numpy(tokens.astype(np.int64))).logits.numpy()
  rel = np.abs(ours - ref).max() / np.abs(ref).max()
  assert rel <= RTOL
  back = hf.load_hf(out, "decoder", scan_layers=scan)
  assert back.skipped == []
  assert_same_params(tree, back.tree)
  for field in ("vocab_size", "num_layers", "emb_dim", "num_heads", "num_kv_heads", "mlp_dim",
                "max_len", "activation", "ln_eps", "tie_embeddings", "norm_type", "mlp",
                "use_bias", "qkv_bias", "rope_theta", "embed_scale", "positions"):
    assert back.section[field] == section[field], field
  assert back.section.rope_scaling.to_dict() == section.rope_scaling.to_dict()
  hd = lambda sec: sec.head_dim or sec.emb_dim // sec.num_heads
  assert hd(back.section) == hd(section)


def test_cli_export_hf_from_an_import_dir(tmp_path):
  section, _, params = _ours("qwen2", seed=3)
  params_io.save_params(str(tmp_path / "p"), params,
                        {"component": "decoder", "section": section.to_dict()})
  assert cli.main(["export-hf", f"--params_dir={tmp_path / 'p'}",
                   f"--out={tmp_path / 'hf'}"]) == 0
  with open(tmp_path / "hf" / "config.json") as f:
    assert json.load(f)["model_type"] == "qwen2"
  back = hf.load_hf(str(tmp_path / "hf"), "decoder")
  np.testing.assert_array_equal(back.tree["layers_1"]["attn"]["key"]["bias"],
                                params["layers_1"]["attn"]["key"]["bias"])
  with pytest.raises(ValueError, match="model.decoder.positions"):  # export-gpt2 = gpt2 only
    cli.main(["export-gpt2", f"--params_dir={tmp_path / 'p'}", f"--out={tmp_path / 'g'}"])


def test_export_model_writes_the_decoder_in_its_family(tmp_path):
  """export_model (the serving export) picks the HF format by family:
  hf_llama/, named in config.json's hf_decoder, loadable by transformers."""
  from metalm_jax import presets
  from metalm_jax.convert import export
  from metalm_jax.models import metalm
  cfg = presets.model_config("tiny")
  cfg.encoders = {}
  cfg.decoder = presets.llama(vocab_size=67, emb_dim=32, num_heads=4, mlp_dim=64, max_len=32)
  model = metalm.build_model(cfg)
  params = metalm.init_variables(model, jax.random.key(0))["params"]
  out = str(tmp_path / "export")
  written = export.export_model(cfg, params, out, seq_len=16, platforms=("cpu",))
  with open(os.path.join(out, "config.json")) as f:
    meta = json.load(f)
  assert meta["hf_decoder"] == {"family": "llama", "dir": "hf_llama"} and "hf_gpt2" not in meta
  assert written["hf_llama"] == os.path.join(out, "hf_llama")
  back = hf.load_hf(written["hf_llama"], "decoder")
  np.testing.assert_array_equal(back.tree["layers_0"]["mlp"]["wi_gate"]["kernel"],
                                np.asarray(nn.meta.unbox(params)["decoder"]["layers_0"]["mlp"]
                                           ["wi_gate"]["kernel"]))
  assert transformers.LlamaForCausalLM.from_pretrained(written["hf_llama"]) is not None


@pytest.mark.parametrize("family,field,value", [
    ("llama", "norm", "deepnorm"), ("gemma", "embed_scale", 1.0),
    ("gemma", "activation", "gelu"), ("qwen2", "positions", "learned")])
def test_decoders_no_family_expresses_are_refused_with_reasons(family, field, value):
  section = presets.decoder_family(family, **{field: value})
  with pytest.raises(ValueError, match=f"0 HF families.*{family}: model.decoder.{field}"):
    hf_export.family_of(section)


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma"])
def test_gpt2_export_refuses_the_new_families(family):
  with pytest.raises(ValueError, match="model.decoder"):
    hf_gpt2.gpt2_config(presets.decoder_family(family))
  assert hf_export.family_of(presets.decoder_family("gpt2")) == "gpt2"
