"""Named remat policies: gradients equal to no remat (float32), the names
the save_* policies keep, and config handling of the old boolean `remat`."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from metalm_jax import presets
from metalm_jax.models import metalm, remat
from metalm_jax.models.decoder import Decoder

B, L = 2, 10


def _decoder(policy, scan):
  section = presets.decoder(vocab_size=53, num_layers=2, emb_dim=32, num_heads=4, mlp_dim=64,
                            max_len=16, remat_policy=policy, scan_layers=scan)
  return Decoder(ml_collections.FrozenConfigDict(section))


def _inputs():
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, 53, (B, L)).astype(np.int32)
  seg = np.ones((B, L), np.int32)
  seg[1, :3] = 0
  pos = np.maximum(np.cumsum(seg, 1) - 1, 0).astype(np.int32)
  return tokens, pos, seg


def _grads(model, params):
  tokens, pos, seg = _inputs()

  def loss(p):
    logits = model.apply({"params": p}, tokens, pos, seg)
    return jnp.mean(jax.nn.log_softmax(logits)[..., 0] * seg)
  return jax.jit(jax.grad(loss))(params)


_PARAMS = {}


def _params(scan):
  if scan not in _PARAMS:
    tokens, pos, seg = _inputs()
    _PARAMS[scan] = nn.meta.unbox(_decoder("none", scan).init(jax.random.key(0), tokens, pos,
                                                              seg)["params"])
  return _PARAMS[scan]


_REF = {}


@pytest.mark.parametrize("policy,scan", [
    ("full", False), ("full", True), ("dots_with_no_batch_dims_saveable", True),
    ("save_qkv_attn_out", True)])
def test_remat_gradients_equal_no_remat(policy, scan):
  params = _params(scan)
  if scan not in _REF:
    _REF[scan] = _grads(_decoder("none", scan), params)
  ref = _REF[scan]
  got = _grads(_decoder(policy, scan), params)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(ref)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6, rtol=1e-5)


def _saved(policy, capsys):
  """The residuals jax keeps for the backward pass, as printed by jax."""
  model = _decoder(policy, False)
  tokens, pos, seg = _inputs()
  f = lambda p: model.apply({"params": p}, tokens, pos, seg).sum()
  jax.ad_checkpoint.print_saved_residuals(f, _params(False))
  return capsys.readouterr().out


def test_save_policies_keep_their_named_activations(capsys):
  qkv = _saved("save_qkv_proj", capsys)
  assert "named 'query_proj'" in qkv and "named 'value_proj'" in qkv
  assert "mlp_hidden" not in qkv and "attn_out" not in qkv
  mlp = _saved("save_mlp_hidden", capsys)
  assert "named 'mlp_hidden'" in mlp and "query_proj" not in mlp
  full = _saved("full", capsys)
  assert "named" not in full
  # Without remat more activations are kept than with 'full' (params aside).
  acts = lambda out: [l for l in out.splitlines()
                      if not any(w in l for w in ("argument", "literal", "constant"))]
  assert len(acts(_saved("none", capsys))) > len(acts(full))


def test_policy_names_and_the_old_boolean():
  assert set(remat.POLICIES) >= {"none", "full", "dots_saveable",
                                 "dots_with_no_batch_dims_saveable", "save_qkv_proj",
                                 "save_attn_out", "save_mlp_hidden"}
  legacy = ml_collections.ConfigDict(dict(remat=True))
  assert remat.policy_name(legacy) == "full"
  assert remat.policy_name(ml_collections.ConfigDict(dict(remat=False))) == "none"
  cfg = presets.model_config("tiny")
  cfg.decoder.remat_policy = "dots_savable"
  with pytest.raises(ValueError, match="model.decoder.remat_policy='dots_savable'"):
    metalm.build_model(cfg)
  cfg = presets.model_config("tiny")
  cfg.encoders.vision.remat_policy = "none"
  cfg.encoders.vision.remat = True
  with pytest.raises(ValueError, match="model.encoders.vision.remat=True contradicts"):
    metalm.build_model(cfg)
