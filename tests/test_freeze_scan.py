"""Partial freezing with stacked (scanned) params: the paper's language
encoder recipe (all but the top 2 layers frozen, a regex on unrolled names)
applied to a scanned encoder's stacked leaves, slice by slice; equal to the
unrolled run; FLOPs and parameter counts unchanged by the layout."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metalm_jax import presets
from metalm_jax.models import layout, metalm
from metalm_jax.train import config_defaults, metrics as metrics_lib, state as st

ENC_LAYERS = 4


def _model_cfg(scan):
  cfg = presets.model_config("tiny")
  cfg.encoders = {"text": presets.bert(num_layers=ENC_LAYERS, emb_dim=16, num_heads=2, mlp_dim=32,
                                       vocab_size=64, max_len=8, scan_layers=scan)}
  cfg.decoder.update(vocab_size=64, emb_dim=16, num_heads=2, mlp_dim=32, scan_layers=scan)
  return cfg


def _abstract_params(scan):
  model = metalm.build_model(_model_cfg(scan))
  return nn.meta.unbox(metalm.abstract_variables(model)["params"])


def _opt_cfg():
  c = config_defaults.optimizer(lr=0.05, b1=0.9, b2=0.98, weight_decay=0.1, warmup_steps=0,
                                decay="constant", clip_norm=1.0)
  c.groups = {"frozen_text_encoder": dict(
      regex=st.below_top_regex("text", ENC_LAYERS, 2), frozen=True, lr_mult=1.0)}
  return c


def _run(params, grads_seq, c):
  tx = st.make_optimizer(c, 10)
  state = st.init_state(params, tx)
  p, opt = state["params"], state["opt_state"]
  update = jax.jit(lambda g, o, p: tx.update(g, o, p))
  for g in grads_seq:
    upd, opt = update(g, opt, p)
    p = jax.tree.map(jnp.add, p, upd)
  return p, opt


def test_frozen_layers_of_a_stacked_encoder_do_not_move():
  rng = np.random.default_rng(0)
  abstract = _abstract_params(scan=True)
  rand = lambda s: jnp.asarray(rng.normal(size=s.shape).astype(np.float32))
  params = jax.tree.map(rand, abstract)
  grads_seq = [jax.tree.map(rand, abstract) for _ in range(3)]
  c = _opt_cfg()
  mask = st.trainable_mask(params, c)
  enc = mask["encoders_text"]["bert"]
  np.testing.assert_array_equal(enc["layers"]["attn"]["query"]["kernel"], [0, 0, 1, 1])
  assert enc["word_embeddings"]["embedding"] is False
  assert mask["decoder"]["layers"]["mlp"]["wi"]["kernel"] is True
  assert st.param_labels(params, c)["encoders_text"]["bert"]["layers"]["mlp"]["wo"]["kernel"] \
      == st.DEFAULT_GROUP

  p, opt = _run(params, grads_seq, c)
  before, after = params["encoders_text"]["bert"], p["encoders_text"]["bert"]
  for path, x0 in jax.tree_util.tree_leaves_with_path(before["layers"]):
    x1 = np.asarray(dict(jax.tree_util.tree_leaves_with_path(after["layers"]))[path])
    np.testing.assert_array_equal(x1[:2], np.asarray(x0)[:2])   # layers 0, 1 frozen
    assert np.abs(x1[2:] - np.asarray(x0)[2:]).min() > 0, path  # layers 2, 3 trained
  np.testing.assert_array_equal(after["word_embeddings"]["embedding"],
                                before["word_embeddings"]["embedding"])
  assert np.abs(p["decoder"]["embedder"]["embedding"]
                - params["decoder"]["embedder"]["embedding"]).max() > 0
  # Adam's moments never saw the frozen slices.
  mus = [x for path, x in jax.tree_util.tree_leaves_with_path(opt)
         if "encoders_text" in jax.tree_util.keystr(path)
         and "'layers'" in jax.tree_util.keystr(path) and x.ndim >= 2]
  assert mus and all(np.all(np.asarray(m)[:2] == 0) and np.any(np.asarray(m)[2:] != 0)
                     for m in mus)

  # The unrolled layout with the same numbers ends at the same params
  # (clipping norm, Adam and weight decay see the same trainable values).
  p_u, _ = _run(layout.unstack(params), [layout.unstack(g) for g in grads_seq], c)
  for a, b in zip(jax.tree.leaves(layout.unstack(p)), jax.tree.leaves(p_u)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)


def test_two_trainable_groups_in_one_stack_are_refused():
  params = _abstract_params(scan=True)
  c = _opt_cfg()
  c.groups = {"top": dict(regex=r"^encoders_text/bert/layers_3/", frozen=False, lr_mult=0.5)}
  with pytest.raises(ValueError, match=r"'encoders_text/bert/layers/.*'default', 'top'"):
    st.param_labels(params, c)


def test_flops_and_counts_do_not_depend_on_the_layout():
  c = _opt_cfg()
  got = {}
  for scan in (False, True):
    params = _abstract_params(scan)
    trainable = st.trainable_mask(params, c)
    flops = metrics_lib.flops_per_example(_model_cfg(scan), params, trainable, 16)
    counts = metrics_lib.log_parameter_overview(params, trainable).splitlines()[-1]
    got[scan] = (flops, counts, metalm.count_params(params))
  assert got[True] == got[False]
  assert "frozen: 0" not in got[True][1]


@pytest.mark.parametrize("top", [0, 1])
def test_encoder_top_layers_trains_only_the_top_layers(top):
  """optimizer.encoder_top_layers.text=k (the sweep axis of the paper's
  'how many top encoder layers train'): after updates, exactly the top k
  layers of the (stacked) text encoder moved; its embeddings and lower
  layers did not; the connector and the decoder did."""
  rng = np.random.default_rng(1)
  abstract = _abstract_params(scan=True)
  rand = lambda s: jnp.asarray(rng.normal(size=s.shape).astype(np.float32))
  params = jax.tree.map(rand, abstract)
  grads_seq = [jax.tree.map(rand, abstract) for _ in range(2)]
  c = config_defaults.optimizer(lr=0.05, warmup_steps=0, decay="constant")
  c.encoder_top_layers = {"text": top}
  c = st.resolve_groups(c, _model_cfg(scan=True))
  p, _ = _run(params, grads_seq, c)
  before, after = params["encoders_text"]["bert"], p["encoders_text"]["bert"]
  moved = lambda a, b: bool(np.abs(np.asarray(a) - np.asarray(b)).max() > 0)
  for path, x0 in jax.tree_util.tree_leaves_with_path(before["layers"]):
    x1 = np.asarray(dict(jax.tree_util.tree_leaves_with_path(after["layers"]))[path])
    x0 = np.asarray(x0)
    for i in range(ENC_LAYERS):
      assert moved(x1[i], x0[i]) == (i >= ENC_LAYERS - top), (path, i)
  for name in ("word_embeddings", "embed_norm"):
    for a, b in zip(jax.tree.leaves(before[name]), jax.tree.leaves(after[name])):
      np.testing.assert_array_equal(a, b)
  assert all(moved(a, b) for a, b in zip(jax.tree.leaves(params["connectors_text"]),
                                         jax.tree.leaves(p["connectors_text"])))
  assert moved(p["decoder"]["embedder"]["embedding"], params["decoder"]["embedder"]["embedding"])


def test_encoder_top_layers_values():
  model = presets.model_config("tiny")  # vision: 2 layers, final_norm after them
  c = config_defaults.optimizer()
  for k in (-1, 2):  # every layer trains: no group
    c.encoder_top_layers = {"vision": k}
    assert not st.resolve_groups(c, model).groups
  c.encoder_top_layers = {"vision": 1}
  names = {"encoders_vision/vit/layers_0/mlp/wi/kernel": False,
           "encoders_vision/vit/patch_embed/kernel": False,
           "encoders_vision/vit/layers_1/mlp/wi/kernel": True,
           "encoders_vision/vit/final_norm/scale": True,
           "connectors_vision/layers_0/kernel": True, "encoders_text/bert/layers_0/x": True}
  groups = st.resolve_groups(c, model).groups
  assert list(groups) == ["frozen_below_top_vision"]
  assert {n: st.group_of(n, groups) == st.DEFAULT_GROUP for n in names} == names
  for bad, msg in (({"audio": 1}, r"encoder_top_layers.audio: no such encoder"),
                   ({"vision": 3}, r"encoder_top_layers.vision=3 must be an integer in \[-1, 2\]")):
    c.encoder_top_layers = bad
    with pytest.raises(ValueError, match=msg):
      st.resolve_groups(c, model)
