"""The audio encoder: log-mel features against WhisperFeatureExtractor, pooling
against numpy, config errors, sharding names, and a tiny MetaLM with a
"whisper" encoder forward/backward (invalid clips change nothing).

Feature tolerance: max |ours - HF| <= 2e-4 on features of range about
[-1.5, 1.5] (float32; measured <= 8.3e-5; HF's own numpy and torch paths
differ by up to 6.6e-5 on the same inputs).
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metalm_jax import batch as batch_lib
from metalm_jax import presets
from metalm_jax.models import audio, log_mel, metalm

FEATURE_ATOL = 2e-4


def _clips(s, sr, seed=0):
  t = np.arange(s) / sr
  rng = np.random.default_rng(seed)
  tones = 0.3 * np.sin(2 * np.pi * 1234.5 * t) + 0.2 * np.sin(2 * np.pi * 97.0 * t)
  return {"noise": 0.1 * rng.standard_normal(s),
          "sine": 0.5 * np.sin(2 * np.pi * 440.0 * t),
          "tones_then_silence": np.where(t < t[-1] / 2, tones, 0.0)}


@pytest.mark.parametrize("mels,seconds,n_fft,hop", [(80, 1, 400, 160), (128, 2, 400, 160),
                                                    (16, 1, 512, 200)])
def test_log_mel_equals_whisper_feature_extractor(mels, seconds, n_fft, hop):
  transformers = pytest.importorskip("transformers")
  sr = 16000
  fe = transformers.WhisperFeatureExtractor(feature_size=mels, sampling_rate=sr,
                                            chunk_length=seconds, n_fft=n_fft, hop_length=hop)
  clips = {k: v.astype(np.float32) for k, v in _clips(seconds * sr, sr).items()}
  for name, wave in clips.items():
    ref = fe(wave, sampling_rate=sr, return_tensors="np")["input_features"][0].T
    ours = np.asarray(log_mel.log_mel(wave, sr, n_fft, hop, mels))  # numpy in
    assert ours.shape == ref.shape == (seconds * sr // hop, mels), name
    assert np.abs(ours - ref).max() <= FEATURE_ATOL, (name, np.abs(ours - ref).max())
    if name != "noise":  # tones span the clip's full 8-decade (2.0) range
      assert ref.max() - ref.min() > 1.5, name
  # A batch [2, 3, S] (under jit) gives each clip's own features: clips are
  # normalised by their own maximum, never by the batch's.
  stack = np.stack([clips["noise"], clips["sine"], clips["tones_then_silence"]])
  batched = jax.jit(lambda w: log_mel.log_mel(w, sr, n_fft, hop, mels))(
      jnp.asarray(np.stack([stack, 3.0 * stack[::-1]])))
  for i, wave in enumerate(stack):
    np.testing.assert_allclose(batched[0, i], log_mel.log_mel(wave, sr, n_fft, hop, mels),
                               atol=1e-5)


def test_silence_is_finite_and_flat():
  feats = np.asarray(log_mel.log_mel(np.zeros(4000, np.float32)))
  np.testing.assert_array_equal(feats, np.full(feats.shape, (-10.0 + 4.0) / 4.0, np.float32))


def test_pooling_against_numpy():
  x = np.random.default_rng(0).normal(size=(2, 25, 3)).astype(np.float32)
  for n in (1, 4, 5, 25):
    got = np.asarray(audio.pool(jnp.asarray(x), n, "avg"))
    want = np.stack([x[:, int(np.floor(i * 25 / n)):int(np.ceil((i + 1) * 25 / n))].mean(1)
                     for i in range(n)], 1)
    np.testing.assert_allclose(got, want, atol=1e-6)
    got = np.asarray(audio.pool(jnp.asarray(x), n, "stride"))
    np.testing.assert_array_equal(got, x[:, [int((i + 0.5) * 25 / n) for i in range(n)]])


def test_sinusoids_follow_whisper_formula():
  table = audio.whisper_sinusoids(7, 8)  # timescales 10000 ** (-k / 3), k = 0..3
  inv = 10000.0 ** (-np.arange(4) / 3.0)
  ang = np.arange(7)[:, None] * inv[None]
  np.testing.assert_allclose(table, np.concatenate([np.sin(ang), np.cos(ang)], 1), atol=1e-6)


def _audio_cfg(**kw):
  d = dict(max_items=2, max_seconds=0.5, num_mel_bins=16, emb_dim=32, num_heads=2, mlp_dim=64,
           num_layers=1, num_vectors=4)
  d.update(kw)
  return presets.whisper(**d)


@pytest.mark.parametrize("field,value,match", [
    ("num_vectors", 30, "num_vectors=30 must be in \\[1, 25\\]"),
    ("pool", "max", "pool='max'"),
    ("max_positions", 10, "max_seconds=0.5 gives 25 positions > .*max_positions=10"),
    ("hop_length", 0, "hop_length=0"),
])
def test_bad_audio_config_names_the_field(field, value, match):
  cfg = _audio_cfg(**{field: value})
  with pytest.raises(ValueError, match=match):
    jax.eval_shape(lambda: audio.AudioEncoder(cfg).init(jax.random.key(0),
                                                         jnp.zeros((1, 8000))))


def _model_cfg():
  cfg = presets.model_config("tiny")
  cfg.decoder.update(dict(vocab_size=97, num_layers=1, emb_dim=32, num_heads=4, mlp_dim=64,
                          max_len=32))
  cfg.encoders = dict(audio=_audio_cfg())
  return cfg


def test_audio_params_shard_on_the_mesh():
  from jax.sharding import Mesh
  model = metalm.build_model(_model_cfg())
  abstract = metalm.abstract_variables(model)
  mesh = Mesh(np.asarray(jax.devices()[:8]).reshape(2, 2, 2), ("data", "fsdp", "tensor"))
  shard = nn.logical_to_mesh_sharding(nn.get_partition_spec(abstract), mesh,
                                      presets.logical_rules())
  w = shard["params"]["encoders_audio"]["whisper"]
  P = jax.sharding.PartitionSpec
  assert w["conv1"]["kernel"].spec == P(None, None, "fsdp")
  assert w["conv2"]["kernel"].spec == P(None, None, "fsdp")
  assert w["pos_embedding"].spec == P(None, "fsdp")
  assert w["layers_0"]["attn"]["query"]["kernel"].spec == P("fsdp", "tensor", None)
  assert w["layers_0"]["mlp"]["wi"]["kernel"].spec == P("fsdp", "tensor")


def test_tiny_metalm_with_audio_forward_backward():
  """Clip 0 docked at positions 2..5 of each row; clip 1 is invalid. Loss and
  gradients are finite and reach the audio encoder; the invalid clip (NaN or
  noise) changes neither. (Docked inputs equal connector(encoder) for every
  registered modality in the model property tests; pooling is checked above.)"""
  cfg = _model_cfg()
  model = metalm.build_model(cfg)
  v = metalm.init_variables(model, jax.random.key(0))
  b, l, t = 2, 16, cfg.encoders.audio.num_vectors
  rng = np.random.default_rng(0)
  batch = batch_lib.dummy_batch(cfg, b, l)
  batch["tokens"] = rng.integers(0, 97, (b, l)).astype(np.int32)
  batch["targets"] = np.roll(batch["tokens"], -1, 1)
  batch["segment_ids"][:] = 1
  batch["positions"][:] = np.arange(l)
  batch["dock_mask"][:, 2:2 + t] = True
  batch["dock_index"][:, 2:2 + t] = np.arange(t)  # item 0 of the only encoder
  batch["loss_mask"][:] = 1.0
  batch["loss_mask"][:, 1:1 + t] = 0.0
  aud = batch["encoders"]["audio"]
  clips = list(_clips(aud["waveform"].shape[-1], 16000).values())
  aud["waveform"][:, 0] = np.stack(clips[:2]).astype(np.float32)
  aud["valid"][:, 0] = True
  aud["waveform"][:, 1] = np.nan
  batch_lib.validate_batch(batch, cfg, 97)

  def loss_fn(params, bt):
    logits = model.apply({"params": params}, bt)
    ce = -jnp.take_along_axis(jax.nn.log_softmax(logits), bt["targets"][..., None], -1)[..., 0]
    return (ce * bt["loss_mask"]).sum() / bt["loss_mask"].sum(), logits

  step = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))
  (loss, logits), grads = step(v["params"], batch)
  grads = nn.meta.unbox(grads)
  assert np.isfinite(float(loss))
  assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))
  enc_grads = grads["encoders_audio"]["whisper"]
  for g in (enc_grads["conv1"]["kernel"], enc_grads["layers_0"]["attn"]["query"]["kernel"],
            grads["connectors_audio"]["dense_0"]["kernel"]):
    assert float(jnp.abs(g).max()) > 0
  batch2 = jax.tree.map(np.copy, batch)
  batch2["encoders"]["audio"]["waveform"][:, 1] = rng.normal(size=(b, 8000))
  (loss2, logits2), grads2 = step(v["params"], batch2)
  np.testing.assert_array_equal(np.asarray(logits2), np.asarray(logits))
  for g, g2 in zip(jax.tree.leaves(grads), jax.tree.leaves(nn.meta.unbox(grads2))):
    np.testing.assert_array_equal(np.asarray(g2), np.asarray(g))

