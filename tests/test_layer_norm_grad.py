"""The hand-written layer-norm backward and the erf GELU against float64
references (numpy finite differences, scipy's erf) and against autodiff."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import erf

from metalm_jax.models import layers


def _plain_ln(x, scale, bias, eps):
  """The layer norm as autodiff sees it: the same forward, no custom VJP."""
  normed, _ = layers._ln_forward(x, eps)
  return normed * scale + bias


def _ln64(x, scale, bias, eps):
  mu = x.mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + eps) * scale + bias


def _inputs(shape=(2, 3, 6), seed=0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=shape) * 2.0 + 0.5
  scale = rng.normal(size=shape[-1:]) + 1.0
  bias = rng.normal(size=shape[-1:])
  cot = rng.normal(size=shape)
  return x, scale, bias, cot


def _finite_difference_grads(x, scale, bias, cot, eps, h=1e-6):
  """d sum(cot * LN(x)) / d(x, scale, bias) in float64 by central differences."""
  def f(xx, ss, bb):
    return float((cot * _ln64(xx, ss, bb, eps)).sum())
  grads = []
  for which, arr in enumerate((x, scale, bias)):
    g = np.zeros_like(arr)
    for idx in np.ndindex(arr.shape):
      args = [x.copy(), scale.copy(), bias.copy()]
      args[which][idx] += h
      up = f(*args)
      args[which][idx] -= 2 * h
      g[idx] = (up - f(*args)) / (2 * h)
    grads.append(g)
  return grads


def test_forward_is_bit_identical_to_the_plain_formula():
  x, scale, bias, _ = (a.astype(np.float32) for a in _inputs((4, 33, 64)))
  ours = layers.layer_norm(x, scale, bias, 1e-5, jnp.dtype(jnp.float32))
  np.testing.assert_array_equal(np.asarray(ours), np.asarray(_plain_ln(x, scale, bias, 1e-5)))


@pytest.mark.parametrize("eps", [1e-5, 1e-12])
def test_backward_matches_float64_finite_differences(eps):
  x, scale, bias, cot = _inputs()
  want = _finite_difference_grads(x, scale, bias, cot, eps)
  f32 = [a.astype(np.float32) for a in (x, scale, bias)]
  _, vjp = jax.vjp(lambda *a: layers.layer_norm(*a, eps, jnp.dtype(jnp.float32)), *f32)
  got = vjp(cot.astype(np.float32))
  for name, g, w in zip(("x", "scale", "bias"), got, want):
    # float32 analytic vs float64 differences (error ~1e-8 at h=1e-6)
    np.testing.assert_allclose(np.asarray(g, np.float64), w, rtol=1e-4, atol=2e-5,
                               err_msg=name)


def test_backward_matches_autodiff_in_a_remat_scan():
  """Inside jax.checkpoint and lax.scan (how the scanned, rematerialised
  stacks call it), gradients equal autodiff's of the plain formula."""
  x, scale, bias, _ = (a.astype(np.float32) for a in _inputs((3, 2, 5, 16), seed=1))

  def stack(norm, x, scale, bias):
    def body(h, s):
      return jax.checkpoint(lambda h: jnp.tanh(norm(h, s, bias)) + h)(h), None
    return jnp.sum(jnp.sin(jax.lax.scan(body, x[0], jnp.stack([scale, scale * 0.5]))[0]))

  ours = functools.partial(layers.layer_norm, eps=1e-5, dtype=jnp.dtype(jnp.float32))
  got = jax.grad(functools.partial(stack, ours), argnums=(0, 1, 2))(x, scale, bias)
  want = jax.grad(functools.partial(stack, functools.partial(_plain_ln, eps=1e-5)),
                  argnums=(0, 1, 2))(x, scale, bias)
  for g, w in zip(got, want):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-5, atol=1e-6)


def test_bfloat16_input_keeps_dtypes():
  x, scale, bias, cot = _inputs((2, 4, 8), seed=2)
  xb = jnp.asarray(x, jnp.bfloat16)
  y, vjp = jax.vjp(lambda *a: layers.layer_norm(*a, 1e-5, jnp.dtype(jnp.bfloat16)),
                   xb, jnp.asarray(scale, jnp.float32), jnp.asarray(bias, jnp.float32))
  dx, ds, db = vjp(jnp.asarray(cot, jnp.bfloat16))
  assert (y.dtype, dx.dtype, ds.dtype, db.dtype) == (jnp.bfloat16, jnp.bfloat16, jnp.float32,
                                                     jnp.float32)
  want = _finite_difference_grads(np.asarray(xb, np.float64), scale, bias,
                                  np.asarray(jnp.asarray(cot, jnp.bfloat16), np.float64), 1e-5)
  np.testing.assert_allclose(np.asarray(dx, np.float64), want[0], rtol=2e-2, atol=2e-2)


def test_gelu_erf_against_scipy_float64():
  h = np.linspace(-12, 12, 4001)
  want = 0.5 * h * (1 + erf(h / np.sqrt(2)))
  got = np.asarray(layers.ACTIVATIONS.get("gelu")(jnp.asarray(h, jnp.float32)), np.float64)
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
  # and the erfc form jax.nn.gelu takes, within float32 rounding
  erfc = np.asarray(jax.nn.gelu(jnp.asarray(h, jnp.float32), approximate=False), np.float64)
  np.testing.assert_allclose(got, erfc, rtol=1e-6, atol=1e-6)
  # its gradient: Phi(h) + h * phi(h)
  dgot = np.asarray(jax.vmap(jax.grad(layers.gelu_erf))(jnp.asarray(h, jnp.float32)))
  dwant = 0.5 * (1 + erf(h / np.sqrt(2))) + h * np.exp(-h * h / 2) / np.sqrt(2 * np.pi)
  np.testing.assert_allclose(dgot, dwant, rtol=1e-5, atol=1e-6)
