"""Block numerics against an independent float64 numpy implementation."""
import flax.linen as nn
import jax
import numpy as np
import pytest
from scipy.special import erf

from metalm_jax.models import layers
from tests.model_fixtures import numpy_attention


def _ln(x, p, eps):
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + eps) * p["scale"] + p["bias"]


def _mlp(x, p):
  h = x @ p["wi"]["kernel"] + p["wi"]["bias"]
  h = 0.5 * h * (1 + erf(h / np.sqrt(2)))  # exact gelu
  return h @ p["wo"]["kernel"] + p["wo"]["bias"]


@pytest.mark.parametrize("norm", ["pre", "post", "deepnorm"])
def test_block_matches_numpy_float64(norm):
  block = layers.Block(num_heads=2, head_dim=8, mlp_dim=24, activation="gelu", norm=norm,
                       ln_eps=1e-5, deepnorm_alpha=1.7, deepnorm_beta=0.5)
  x = np.random.default_rng(0).normal(size=(2, 5, 16)).astype(np.float32)
  mask = np.tril(np.ones((5, 5), bool))[None, None].repeat(2, 0)
  v = block.init(jax.random.key(1), x, mask)
  out = np.asarray(block.apply(v, x, mask), np.float64)
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), nn.meta.unbox(v["params"]))
  x64 = x.astype(np.float64)
  if norm == "pre":
    h = x64 + numpy_attention(_ln(x64, p["ln_attn"], 1e-5), p["attn"], mask)
    ref = h + _mlp(_ln(h, p["ln_mlp"], 1e-5), p["mlp"])
  else:
    a = 1.7 if norm == "deepnorm" else 1.0
    h = _ln(a * x64 + numpy_attention(x64, p["attn"], mask), p["ln_attn"], 1e-5)
    ref = _ln(a * h + _mlp(h, p["mlp"]), p["ln_mlp"], 1e-5)
  np.testing.assert_allclose(out, ref, atol=2e-5, rtol=1e-4)  # float32 vs float64


def test_deepnorm_scales_init():
  """DeepNorm: value/out/MLP weights are scaled by beta at init (query is not)."""
  x = np.zeros((1, 3, 64), np.float32)
  std = {}
  for beta in (1.0, 0.25):
    blk = layers.Block(num_heads=4, head_dim=16, mlp_dim=256, norm="deepnorm",
                       deepnorm_beta=beta)
    p = nn.meta.unbox(blk.init(jax.random.key(0), x)["params"])
    std[beta] = {k: float(np.std(p["attn"][k]["kernel"])) for k in ("query", "value", "out")}
    std[beta]["wi"] = float(np.std(p["mlp"]["wi"]["kernel"]))
  for k in ("value", "out", "wi"):
    assert std[0.25][k] == pytest.approx(0.25 * std[1.0][k], rel=1e-5)
  assert std[0.25]["query"] == pytest.approx(std[1.0]["query"], rel=1e-5)


def test_sinusoidal_and_rotary_reference():
  t = layers.sinusoidal_table(7, 6)
  pos, i = 5, 1
  assert t[pos, i] == pytest.approx(np.sin(pos / 10000 ** (i / 3)), rel=1e-6)
  assert t[pos, 3 + i] == pytest.approx(np.cos(pos / 10000 ** (i / 3)), rel=1e-6)
  # Rotary: scores depend only on the relative offset of query and key.
  rng = np.random.default_rng(0)
  q = rng.normal(size=(1, 1, 1, 8)).astype(np.float32)
  k = rng.normal(size=(1, 1, 1, 8)).astype(np.float32)
  def score(pq, pk):
    rq = layers.apply_rotary(q, np.array([[pq]]))
    rk = layers.apply_rotary(k, np.array([[pk]]))
    return float((np.asarray(rq) * np.asarray(rk)).sum())
  assert score(3, 1) == pytest.approx(score(12, 10), rel=1e-4)
  assert abs(score(3, 1) - score(3, 2)) > 1e-3
