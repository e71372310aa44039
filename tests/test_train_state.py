"""Optimizer: AdamW + warm-up/decay + clipping + param groups, against a
float64 numpy reference."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metalm_jax.train import config_defaults
from metalm_jax.train import state as st


def _params(rng):
  f = lambda *s: rng.normal(size=s).astype(np.float32)
  return {"dec": {"dense": {"kernel": f(3, 4), "bias": f(4)}, "ln": {"scale": f(4)},
                  "attn": {"bias": f(2, 2)}},
          "enc": {"kernel": f(4, 2)},
          "conn": {"kernel": f(2, 4)}}


def _opt_cfg():
  c = config_defaults.optimizer(lr=0.1, b1=0.9, b2=0.98, eps=1e-8, weight_decay=0.1,
                                warmup_steps=2, decay="cosine", end_lr_frac=0.1, clip_norm=0.5)
  c.groups = {"frozen_enc": dict(regex="^enc/", frozen=True, lr_mult=1.0),
              "slow_conn": dict(regex="^conn/", frozen=False, lr_mult=0.5)}
  return c


def _ref_lr(step, c, total):
  warm = min(1.0, (step + 1) / c.warmup_steps)
  frac = min(max((step - c.warmup_steps) / (total - c.warmup_steps), 0.0), 1.0)
  return c.lr * warm * (c.end_lr_frac + (1 - c.end_lr_frac) * 0.5 * (1 + np.cos(np.pi * frac)))


def _reference(params, grads_seq, c, total):
  """float64 AdamW with global-norm clipping over trainable grads."""
  flat = {k: v.astype(np.float64) for k, v in st_flat(params).items()}
  mu = {k: np.zeros_like(v) for k, v in flat.items()}
  nu = {k: np.zeros_like(v) for k, v in flat.items()}
  for t, grads in enumerate(grads_seq):
    g = {k: v.astype(np.float64) for k, v in st_flat(grads).items() if not k.startswith("enc/")}
    norm = np.sqrt(sum((x ** 2).sum() for x in g.values()))
    scale = 1.0 if norm < c.clip_norm else c.clip_norm / norm
    lr = _ref_lr(t, c, total)
    for k, gk in g.items():
      gk = gk * scale
      mu[k] = c.b1 * mu[k] + (1 - c.b1) * gk
      nu[k] = c.b2 * nu[k] + (1 - c.b2) * gk ** 2
      u = (mu[k] / (1 - c.b1 ** (t + 1))) / (np.sqrt(nu[k] / (1 - c.b2 ** (t + 1))) + c.eps)
      if flat[k].ndim >= 2 and not k.endswith(("bias", "scale")):
        u = u + c.weight_decay * flat[k]
      flat[k] = flat[k] - lr * (0.5 if k.startswith("conn/") else 1.0) * u
  return flat


def st_flat(tree):
  out = {}
  st.map_with_names(lambda n, x: out.__setitem__(n, np.asarray(x)), tree)
  return out


def test_adamw_groups_match_float64_reference():
  rng = np.random.default_rng(0)
  params = _params(rng)
  c, total = _opt_cfg(), 6
  tx = st.make_optimizer(c, total)
  grads_seq = [jax.tree.map(lambda x: (3.0 * rng.normal(size=x.shape)).astype(np.float32), params)
               for _ in range(4)]
  state = st.init_state(jax.tree.map(jnp.asarray, params), tx)
  p, opt = state["params"], state["opt_state"]
  for g in grads_seq:
    upd, opt = tx.update(jax.tree.map(jnp.asarray, g), opt, p)
    p = jax.tree.map(lambda a, b: a + b, p, upd)
  ref = _reference(params, grads_seq, c, total)
  got = st_flat(p)
  for k in ref:
    np.testing.assert_allclose(got[k], ref[k], rtol=2e-5, atol=2e-6, err_msg=k)
  # The frozen group did not move and has no Adam moments.
  np.testing.assert_array_equal(got["enc/kernel"], params["enc"]["kernel"])
  opt_paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(opt)]
  assert any("['conn']" in p for p in opt_paths)
  assert not any("['enc']" in p for p in opt_paths), "frozen params must have no Adam state"


def test_schedule_warmup_then_decay():
  c = config_defaults.optimizer(lr=1.0, warmup_steps=4, decay="linear", end_lr_frac=0.0)
  f = st.lr_schedule(c, 14)
  got = [float(f(s)) for s in (0, 3, 4, 9, 14, 20)]
  np.testing.assert_allclose(got, [0.25, 1.0, 1.0, 0.5, 0.0, 0.0], atol=1e-6)
  c.decay = "constant"
  assert float(st.lr_schedule(c, 14)(10)) == pytest.approx(1.0)


def _reference_lr(decay, lr, warm, end, total, step):
  """The schedule's formula in float64: warm-up step s takes lr * (s + 1) / warm,
  then `decay` over steps warm .. total down to lr * end."""
  warm_f = min(1.0, (step + 1) / warm) if warm else 1.0
  frac = min(max((step - warm) / max(total - warm, 1), 0.0), 1.0)
  shape = {"cosine": 0.5 * (1 + np.cos(np.pi * frac)), "linear": 1 - frac, "constant": 1.0}
  return lr * warm_f * (end + (1 - end) * shape[decay])


@pytest.mark.parametrize("decay", sorted(st.SCHEDULES))
def test_optax_schedules_equal_the_formula(decay):
  """optax schedules (join_schedules of a linear warm-up and the decay) give
  the formula's values; float32 rounding of XLA's reciprocal divisions stays
  below 1.5e-7 * lr (measured), so 5e-7 * lr is the bound."""
  lr = 2e-3
  for warm, total, end in [(0, 10, 0.0), (1, 10, 0.1), (4, 14, 0.0), (30, 600, 0.1),
                           (30, 600, 0.0), (8, 4, 0.0)]:
    c = config_defaults.optimizer(lr=lr, warmup_steps=warm, decay=decay, end_lr_frac=end)
    f = jax.jit(st.lr_schedule(c, total))
    steps = np.arange(total + 5)
    got = np.asarray(f(jnp.asarray(steps, jnp.int32)), np.float64)
    want = np.array([_reference_lr(decay, lr, warm, end, total, int(s)) for s in steps])
    np.testing.assert_allclose(got, want, rtol=0, atol=5e-7 * lr,
                               err_msg=f"decay={decay} warm={warm} total={total} end={end}")


def test_masks_and_labels():
  params = _params(np.random.default_rng(1))
  c = _opt_cfg()
  decay = st_flat(st.decay_mask(params, c))
  assert decay == {"dec/dense/kernel": True, "dec/dense/bias": False, "dec/ln/scale": False,
                   "dec/attn/bias": False, "enc/kernel": True, "conn/kernel": True}
  labels = st_flat(st.param_labels(params, c))
  assert labels["enc/kernel"] == "frozen_enc" and labels["conn/kernel"] == "slow_conn"
  assert labels["dec/dense/kernel"] == st.DEFAULT_GROUP
  trainable = st_flat(st.trainable_mask(params, c))
  assert not trainable["enc/kernel"] and trainable["conn/kernel"]


def test_overlapping_groups_and_bad_regex_are_errors():
  params = _params(np.random.default_rng(2))
  c = _opt_cfg()
  c.groups = {"a": dict(regex="kernel$", frozen=False, lr_mult=1.0),
              "b": dict(regex="^enc/", frozen=True, lr_mult=1.0)}
  with pytest.raises(ValueError,
                     match=r"'enc/kernel' matches several optimizer.groups: \['a', 'b'\]"):
    st.param_labels(params, c)
  c.groups = {"bad": dict(regex="(", frozen=False, lr_mult=1.0)}
  with pytest.raises(ValueError, match=r"optimizer.groups.bad.regex='\('"):
    st.make_optimizer(c, 10)


def test_paper_lang_freezes_all_but_top_two_encoder_layers():
  import re
  rx = st.below_top_regex("text", 24, 2)
  assert re.search(rx, "encoders_text/bert/layers_0/mlp/wi/kernel")
  assert re.search(rx, "encoders_text/bert/word_embeddings/embedding")
  assert re.search(rx, "encoders_text/bert/layers_21/attn/query/kernel")
  assert not re.search(rx, "encoders_text/bert/layers_22/attn/query/kernel")
  assert not re.search(rx, "encoders_text/bert/layers_23/mlp/wo/bias")
  assert not re.search(rx, "connectors_text/proj/kernel")
  assert not re.search(rx, "decoder/layers_0/mlp/wo/kernel")
