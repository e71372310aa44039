"""Whisper's encoder -> our AudioEncoder (`params['encoders_<name>']['whisper']`).

Reads `WhisperModel` / `WhisperForConditionalGeneration` dirs (the decoder's
weights are skipped and listed) and the feature extractor's settings from
`preprocessor_config.json` (sampling_rate, n_fft, hop_length, feature_size,
chunk_length) into the config section; without that file Whisper's defaults
(16 kHz, 400, 160) and a clip of exactly the encoder's 2 * max_source_positions
frames. Whisper: conv1 / conv2 with exact GELU, the position table as stored
(`embed_positions`), pre-LN layers whose key projection has no bias (ours
gets zeros: a key bias shifts every score of a query alike), a final
LayerNorm. Parity is on the hidden states before pooling, from waveforms:
ours (JAX frontend) against WhisperFeatureExtractor + HF's encoder.
"""
from __future__ import annotations

import numpy as np

from metalm_jax import presets
from metalm_jax import storage
from metalm_jax.convert import hf_common as hc
from metalm_jax.models import audio

PREPROCESSOR = "preprocessor_config.json"
DEFAULT_FRONTEND = {"sampling_rate": 16000, "n_fft": 400, "hop_length": 160}


def _conv(get, name):
  """torch Conv1d weight [out, in, k] -> flax [k, in, out]."""
  return {"kernel": get(f"{name}.weight").transpose(2, 1, 0), "bias": get(f"{name}.bias")}


def read_frontend(model_dir: str, hf_cfg) -> dict:
  """Section fields of the feature extractor (its preprocessor_config.json, or
  Whisper's defaults); names the field when a setting cannot be reproduced."""
  path = storage.join(model_dir, PREPROCESSOR)
  fe = storage.read_json(path) if storage.exists(path) else {}
  where = f"{PREPROCESSOR} " if fe else "defaults "
  get = lambda k: fe.get(k, DEFAULT_FRONTEND.get(k))
  sr, n_fft, hop = int(get("sampling_rate")), int(get("n_fft")), int(get("hop_length"))
  mels = int(fe.get("feature_size", hf_cfg.num_mel_bins))
  hc.require(mels == hf_cfg.num_mel_bins, where + "feature_size", mels,
             f"differs from the model's num_mel_bins={hf_cfg.num_mel_bins}")
  hc.require(float(fe.get("dither", 0.0)) == 0.0, where + "dither", fe.get("dither"),
             "random dithering is not reproduced; save the extractor with dither=0.0")
  hc.require(float(fe.get("padding_value", 0.0)) == 0.0, where + "padding_value",
             fe.get("padding_value"), "clips are padded with silence (0.0)")
  frames = 2 * hf_cfg.max_source_positions  # the encoder's fixed input length
  seconds = fe["chunk_length"] if "chunk_length" in fe else frames * hop / sr
  section = {"sample_rate": sr, "n_fft": n_fft, "hop_length": hop, "num_mel_bins": mels,
             "max_seconds": float(seconds), "max_positions": hf_cfg.max_source_positions}
  got = audio.num_samples(presets.whisper(**section)) // hop
  hc.require(got == frames, where + "chunk_length", seconds,
             f"gives {got} frames; the encoder takes {frames} "
             f"(2 x max_source_positions={hf_cfg.max_source_positions})")
  return section


@hc.CONVERTERS.register("whisper")
class Whisper:
  component = "audio"
  anchor = "encoder.conv1.weight"

  @staticmethod
  def section(hf_cfg):
    c = hf_cfg
    hc.require(c.d_model % c.encoder_attention_heads == 0, "encoder_attention_heads",
               c.encoder_attention_heads, f"does not divide d_model={c.d_model}")
    return presets.whisper(
        num_mel_bins=c.num_mel_bins, max_positions=c.max_source_positions,
        num_layers=c.encoder_layers, emb_dim=c.d_model, num_heads=c.encoder_attention_heads,
        mlp_dim=c.encoder_ffn_dim,
        activation=hc.activation(c.activation_function, "activation_function"),
        norm="pre", ln_eps=1e-5, head_dim=0, use_bias=True, dropout=0.0)

  side_settings = staticmethod(read_frontend)

  @staticmethod
  def params(get, section, hf_cfg):
    heads, d = section.num_heads, section.emb_dim
    tree = {
        "conv1": _conv(get, "encoder.conv1"),
        "conv2": _conv(get, "encoder.conv2"),
        "pos_embedding": get("encoder.embed_positions.weight", (section.max_positions, d)),
        "final_norm": hc.layer_norm(get, "encoder.layer_norm"),
    }
    for i in range(section.num_layers):
      p = f"encoder.layers.{i}"
      a = f"{p}.self_attn"
      k_w = get(f"{a}.k_proj.weight").T
      tree[f"layers_{i}"] = {
          "attn": hc.attention(*hc.linear(get, f"{a}.q_proj"), k_w, np.zeros(d, np.float32),
                               *hc.linear(get, f"{a}.v_proj"), *hc.linear(get, f"{a}.out_proj"),
                               heads),
          "ln_attn": hc.layer_norm(get, f"{p}.self_attn_layer_norm"),
          "ln_mlp": hc.layer_norm(get, f"{p}.final_layer_norm"),
          "mlp": {"wi": hc.dense(*hc.linear(get, f"{p}.fc1")),
                  "wo": hc.dense(*hc.linear(get, f"{p}.fc2"))},
      }
    return {"whisper": tree}

  @staticmethod
  def random_inputs(section, rng: np.random.Generator, batch: int, hf_cfg=None):
    """Clip 0 noise; the others two random tones plus noise, silent (zero
    padded) after a random length, as the data pipeline pads."""
    s = audio.num_samples(section)
    t = np.arange(s) / section.sample_rate
    wave = 0.1 * rng.standard_normal((batch, s))
    for b in range(1, batch):
      f1, f2 = rng.uniform(60.0, section.sample_rate / 2.5, 2)
      tone = 0.5 * np.sin(2 * np.pi * f1 * t) + 0.3 * np.sin(2 * np.pi * f2 * t + 1.0)
      wave[b] = np.where(t < rng.uniform(0.3, 1.0) * t[-1], tone + 0.1 * wave[b], 0.0)
    return {"waveform": wave.astype(np.float32)}

  @staticmethod
  def run_ours(section, tree, inputs):
    import jax
    import ml_collections
    model = audio.AudioEncoder(ml_collections.FrozenConfigDict(section))
    out = jax.jit(model.apply)({"params": tree["whisper"]}, inputs["waveform"])
    return np.asarray(out)

  @staticmethod
  def features_hf(model_dir, num_mel_bins, waveform):
    """HF's features [B, n_mels, frames]: the dir's WhisperFeatureExtractor, or
    HF's default one with the model's mel bins when the dir has none."""
    from transformers import WhisperFeatureExtractor
    if storage.exists(storage.join(model_dir, PREPROCESSOR)):
      fe = WhisperFeatureExtractor.from_pretrained(model_dir)
    else:
      fe = WhisperFeatureExtractor(feature_size=num_mel_bins)
    return fe(list(waveform), sampling_rate=fe.sampling_rate, return_tensors="np",
              max_length=waveform.shape[-1])["input_features"]

  @classmethod
  def run_hf(cls, model_dir, inputs):
    import torch
    from transformers import WhisperModel
    model = WhisperModel.from_pretrained(model_dir, dtype=torch.float32).eval()
    feats = cls.features_hf(model_dir, model.config.num_mel_bins, inputs["waveform"])
    with torch.no_grad():
      ref = model.encoder(input_features=torch.from_numpy(feats)).last_hidden_state.numpy()
    return ref, np.ones(ref.shape[:2], bool)
