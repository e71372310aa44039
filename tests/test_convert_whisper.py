"""Whisper encoder import: hidden-state parity from waveforms (our JAX log-mel
+ encoder against WhisperFeatureExtractor + HF's encoder, before pooling) on
random small Whisper models built offline; the feature-extractor settings in
the config section; import of a model dir through the CLI into a MetaLM.

Metric as for the other components: rel = max|ours - ref| / max|ref| <= 1e-4
(float32; measured ~2.5e-7).
"""
import json
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from metalm_jax import params_io  # noqa: E402
from metalm_jax.convert import __main__ as cli  # noqa: E402
from metalm_jax.convert import hf  # noqa: E402

RTOL = 1e-4
_IDS = dict(vocab_size=60, pad_token_id=0, bos_token_id=1, eos_token_id=1,
            decoder_start_token_id=1, max_target_positions=16, decoder_layers=1,
            decoder_attention_heads=2, decoder_ffn_dim=32)
# (model config, feature extractor saved beside it or None, model class)
CASES = [
    (dict(d_model=32, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=64,
          num_mel_bins=16, max_source_positions=40),
     dict(feature_size=16, chunk_length=1, n_fft=512, hop_length=200), "WhisperModel"),
    (dict(d_model=48, encoder_layers=1, encoder_attention_heads=3, encoder_ffn_dim=80,
          num_mel_bins=24, max_source_positions=30, activation_function="gelu_new"),
     None, "WhisperForConditionalGeneration"),
]


def _save(kw, fe_kw, model_cls, path, seed):
  """Random Whisper (every weight perturbed, the position table included) and
  its feature extractor, written as an HF dir."""
  model = getattr(transformers, model_cls)(transformers.WhisperConfig(**_IDS, **kw))
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.1 * torch.randn(p.shape, generator=g))
  model.save_pretrained(str(path))
  if fe_kw is not None:
    transformers.WhisperFeatureExtractor(**fe_kw).save_pretrained(str(path))
  return str(path)


@pytest.mark.parametrize("kw,fe_kw,model_cls", CASES, ids=["model+extractor", "cond-gen"])
def test_whisper_parity_and_frontend_settings(tmp_path, kw, fe_kw, model_cls):
  d = _save(kw, fe_kw, model_cls, tmp_path / "hf", seed=len(str(kw)))
  imp = hf.load_hf(d, "audio")
  s = imp.section
  fe = fe_kw or {}
  assert (s.num_mel_bins, s.n_fft, s.hop_length, s.sample_rate) == (
      kw["num_mel_bins"], fe.get("n_fft", 400), fe.get("hop_length", 160), 16000)
  frames = 2 * kw["max_source_positions"]
  assert s.max_positions == kw["max_source_positions"]
  assert round(s.max_seconds * s.sample_rate) // s.hop_length == frames
  assert any("decoder." in k for k in imp.skipped)  # listed, not imported
  assert not any("encoder." in k for k in imp.skipped)  # every encoder weight used
  r = hf.check_hf(d, "audio", seed=1, batch=3, scan_layers=model_cls != "WhisperModel")
  assert r["ok"], r
  assert r["rel"] <= RTOL and r["max_ref"] > 0.1
  assert r["shape"] == [3, kw["max_source_positions"], kw["d_model"]]


def test_import_whisper_dir_into_a_metalm(tmp_path, capsys):
  """import-hf --component=audio through the CLI; the params load
  into a MetaLM's `encoders_audio` with the section as the encoder config;
  the stored position table comes over as-is."""
  import flax.linen as nn
  import ml_collections
  from metalm_jax import presets
  from metalm_jax.models import metalm
  kw, fe_kw, model_cls = CASES[0]
  d = _save(kw, fe_kw, model_cls, tmp_path / "hf", seed=3)
  out = str(tmp_path / "out")
  assert cli.main(["import-hf", f"--model_dir={d}", "--component=audio", f"--out={out}"]) == 0
  assert "model.encoders.audio" in capsys.readouterr().out
  tree, meta = params_io.load_params(out)
  assert meta["params_key"] == "encoders_audio" and meta["hf_model_type"] == "whisper"
  table = transformers.WhisperModel.from_pretrained(d).encoder.embed_positions.weight
  np.testing.assert_array_equal(tree["whisper"]["pos_embedding"], table.detach().numpy())
  cfg = presets.model_config("tiny")
  cfg.encoders = {"audio": ml_collections.ConfigDict(meta["section"])}
  abstract = nn.meta.unbox(metalm.abstract_variables(metalm.build_model(cfg))["params"])
  want = params_io.flatten(abstract["encoders_audio"])
  got = params_io.flatten(tree)
  assert want.keys() == got.keys()
  for k in want:
    assert tuple(want[k].shape) == got[k].shape, k


def test_frontend_settings_that_cannot_match_are_named(tmp_path):
  kw, fe_kw, model_cls = CASES[0]
  d = _save(kw, fe_kw, model_cls, tmp_path / "hf", seed=0)
  path = os.path.join(d, "preprocessor_config.json")
  good = json.load(open(path))
  for field, value, match in [("feature_size", 80, "feature_size=80.*num_mel_bins=16"),
                              ("chunk_length", 2, "chunk_length=2.*160 frames.*takes 80"),
                              ("dither", 1e-4, "dither=0.0001")]:
    json.dump(dict(good, **{field: value}), open(path, "w"))
    with pytest.raises(ValueError, match=match):
      hf.load_hf(d, "audio")
