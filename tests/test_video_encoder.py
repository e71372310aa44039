"""The video encoder against references built from the image ViT and numpy:
per-frame ViT + temporal positions + window pooling, frame locality without
temporal layers, attention across time with them. (Causality, docking,
padding and sharding of the "video" modality: tests/test_model_properties.py;
CLIP parity: tests/test_convert_hf.py.)"""
import flax.linen as nn
import jax
import ml_collections
import numpy as np
import pytest

from metalm_jax import presets
from metalm_jax.models import video as video_lib
from metalm_jax.models.vision import VisionEncoder

F, C = 4, 3  # frames per clip, clips
ATOL = 1e-5


def _cfg(**kw):
  return ml_collections.FrozenConfigDict(presets.video(
      image_size=16, patch_size=8, num_layers=1, emb_dim=16, num_heads=2, mlp_dim=32, frames=F,
      **kw))


def _random_params(module, x, seed):
  rng = np.random.default_rng(seed)
  shapes = nn.meta.unbox(jax.eval_shape(module.init, jax.random.key(0), x))["params"]
  return jax.tree.map(lambda s: (0.3 * rng.standard_normal(s.shape)).astype(s.dtype), shapes)


FRAMES = np.random.default_rng(0).standard_normal((C, F, 16, 16, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def vit_tokens():
  """(video params without temporal layers, per-frame ViT tokens [C, F, T, D]
  from the image encoder alone)."""
  cfg = _cfg(temporal_layers=0)
  params = _random_params(video_lib.VideoEncoder(cfg), FRAMES, 1)
  tokens = jax.jit(VisionEncoder(cfg).apply)({"params": params["vit"]},
                                             FRAMES.reshape((C * F,) + FRAMES.shape[2:]))
  return params, np.asarray(tokens, np.float64).reshape(C, F, -1, cfg.emb_dim)


def _windows(x, k):
  """Adaptive average pooling over axis 1 (numpy float64)."""
  m = x.shape[1]
  return np.stack([x[:, (i * m) // k:-((-(i + 1) * m) // k)].mean(1) for i in range(k)], 1)


@pytest.mark.parametrize("pool,k", [("frames", 2), ("tokens", 3)])
def test_pooling_matches_numpy_reference(vit_tokens, pool, k):
  params, tokens = vit_tokens
  cfg = _cfg(temporal_layers=0, pool=pool, num_vectors=k)
  out = jax.jit(video_lib.VideoEncoder(cfg).apply)({"params": params}, FRAMES[:, None])
  assert out.shape == (C, 1, k, cfg.emb_dim)  # leading dims kept
  x = tokens + np.asarray(params["temporal_pos_embedding"], np.float64)[None, :, None]
  ref = _windows(x[:, :, 0] if pool == "frames" else x.mean(1), k)  # class token / mean over frames
  np.testing.assert_allclose(np.asarray(out)[:, 0], ref, atol=ATOL)
  np.testing.assert_array_equal(video_lib.window_matrix(5, 3).sum(1), np.ones(3, np.float32))


def test_temporal_layers_attend_across_frames():
  """Vector 0 (frame 0) sees the last frame only through the temporal layers."""
  later = FRAMES.copy()
  later[:, -1] += 1.0
  for layers, changes in ((0, False), (1, True)):
    enc = video_lib.VideoEncoder(_cfg(temporal_layers=layers, pool="frames", num_vectors=F))
    params = _random_params(enc, FRAMES, 2)
    run = jax.jit(enc.apply)
    a, b = np.asarray(run({"params": params}, FRAMES)), np.asarray(run({"params": params}, later))
    assert (np.abs(a[:, 0] - b[:, 0]).max() > 1e-4) == changes, layers
    assert np.abs(a[:, -1] - b[:, -1]).max() > 1e-4


def test_bad_video_fields_are_named():
  from metalm_jax.models import metalm
  for field, value, match in (("pool", "max", "pool='max'"),
                              ("num_vectors", 5, "num_vectors=5: the pool yields 4"),
                              ("temporal_heads", 3, "temporal_heads=3"),
                              ("frames", 0, "frames=0")):
    cfg = presets.model_config("tiny")
    cfg.encoders = {"clip": presets.video(**{field: value})}
    with pytest.raises(ValueError, match=f"model.encoders.clip.{match}"):
      metalm.build_model(cfg)
  enc = video_lib.VideoEncoder(_cfg())
  with pytest.raises(ValueError, match=r"expected \[..., F=4, H, W, 3\]"):
    jax.eval_shape(enc.init, jax.random.key(0), FRAMES[:, :3])
