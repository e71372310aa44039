"""Mesh from config, logical rules, state shardings, the fsdp check, global
batches, and the FLOPs-per-example formula."""
import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np
import pytest

from metalm_jax import batch as batch_lib
from metalm_jax import presets
from metalm_jax import sharding as sh
from metalm_jax.models import layout, metalm
from metalm_jax.train import config_defaults
from metalm_jax.train import metrics as metrics_lib
from metalm_jax.train import state as st


def test_mesh_shape_inference_and_errors():
  assert sh.mesh_shape(dict(data=-1, fsdp=2, tensor=2), 8) == (2, 2, 2)
  assert sh.mesh_shape(dict(data=1, fsdp=-1, tensor=1), 8) == (1, 8, 1)
  with pytest.raises(ValueError, match=r"mesh.fsdp=-1 cannot be inferred: 8 devices .* 3"):
    sh.mesh_shape(dict(data=3, fsdp=-1, tensor=1), 8)
  with pytest.raises(ValueError, match=r"only one mesh axis may be -1"):
    sh.mesh_shape(dict(data=-1, fsdp=-1, tensor=1), 8)
  with pytest.raises(ValueError, match=r"needs 4 devices, but 8 are available"):
    sh.mesh_shape(dict(data=2, fsdp=2, tensor=1), 8)
  with pytest.raises(ValueError, match=r"mesh.tensor=0"):
    sh.mesh_shape(dict(data=1, fsdp=1, tensor=0), 8)
  with pytest.raises(ValueError, match=r"names mesh axis 'model'"):
    sh.rules_from_config([("embed", "model")])


def _abstract(model_cfg, opt_cfg):
  """(boxed abstract state, unboxed abstract state), as the trainer builds them."""
  model = metalm.build_model(model_cfg)
  tx = st.make_optimizer(opt_cfg, 10)
  def init_params(rng):
    dummy = jax.tree.map(jnp.asarray, batch_lib.dummy_batch(model.cfg, 1, 8))
    return model.init(rng, dummy)["params"]
  boxed = jax.eval_shape(lambda r: st.init_state(init_params(r), tx), jax.random.key(0))
  return boxed, st.unbox(boxed)


def test_state_shardings_put_large_params_on_fsdp():
  mesh = sh.make_mesh(dict(data=2, fsdp=2, tensor=2))
  opt = config_defaults.optimizer()
  boxed, abstract = _abstract(presets.model_config("tiny"), opt)
  rules = sh.rules_from_config(presets.logical_rules())
  shardings = sh.state_shardings(boxed, mesh, rules)
  emb = shardings["params"]["decoder"]["embedder"]["embedding"]
  assert tuple(emb.spec) == ("tensor", "fsdp")
  wi = shardings["params"]["decoder"]["layers_0"]["mlp"]["wi"]["kernel"]
  assert tuple(wi.spec) == ("fsdp", "tensor")
  # Adam moments follow their parameter; the step counter is replicated.
  flat_sh = jax.tree_util.tree_leaves_with_path(
      shardings["opt_state"], is_leaf=lambda x: isinstance(x, jax.sharding.NamedSharding))
  mu_emb = [s for p, s in flat_sh if jax.tree_util.keystr(p).endswith(
      ".mu['decoder']['embedder']['embedding']")]
  assert len(mu_emb) == 1 and tuple(mu_emb[0].spec) == ("tensor", "fsdp")
  assert tuple(shardings["step"].spec) == ()
  sh.check_large_params_sharded(abstract["params"], shardings["params"], mesh, 1024)
  # Rules that leave `embed` replicated fail the start-up check, naming params.
  bad_rules = sh.rules_from_config([r for r in presets.logical_rules() if r[0] != "embed"]
                                   + [("embed", None)])
  bad = sh.state_shardings(boxed, mesh, bad_rules)
  with pytest.raises(ValueError, match=r"not sharded over fsdp.*decoder/"):
    sh.check_large_params_sharded(abstract["params"], bad["params"], mesh, 1024)
  # Materialised state really is split: each device holds 1/(fsdp*tensor) of the embedding.
  init = jax.jit(lambda: jax.tree.map(jnp.zeros_like, abstract["params"]["decoder"]["embedder"]),
                 out_shardings=shardings["params"]["decoder"]["embedder"])
  arr = init()["embedding"]
  assert arr.addressable_shards[0].data.shape == (1024 // 2, 64 // 2)


def test_optimizer_state_shardings_mirror_params_with_frozen_groups():
  """Specs come from the boxed abstract state: with a frozen group, a group with
  its own lr and a scanned stack whose lower layers are frozen, every Adam
  moment takes its parameter's sharding (matched here by name and shape),
  every other optimizer leaf is replicated, and the tree is the unboxed state's."""
  mesh = sh.make_mesh(dict(data=1, fsdp=4, tensor=2))
  cfg = presets.model_config("tiny")
  cfg.decoder.scan_layers = True
  cfg.encoders.text.scan_layers = True
  opt = config_defaults.optimizer()
  opt.groups = {"frozen_text": dict(regex=r"^encoders_text/bert/(?!layers_1/)", frozen=True,
                                    lr_mult=1.0),
                "slow": dict(regex="^connectors_", frozen=False, lr_mult=0.1),
                "frozen_vision": dict(regex="^encoders_vision/", frozen=True, lr_mult=1.0)}
  boxed, abstract = _abstract(cfg, opt)
  shardings = sh.state_shardings(boxed, mesh, sh.rules_from_config(presets.logical_rules()))
  is_sh = lambda x: isinstance(x, jax.sharding.NamedSharding)
  assert jax.tree.structure(shardings, is_leaf=is_sh) == jax.tree.structure(
      jax.tree.map(lambda _: 0, abstract))
  params = {layout.path_str(p): (x.shape, s) for (p, x), s in zip(
      jax.tree_util.tree_leaves_with_path(abstract["params"]),
      jax.tree.leaves(shardings["params"], is_leaf=is_sh))}
  moments = 0
  for (path, x), s in zip(jax.tree_util.tree_leaves_with_path(abstract["opt_state"]),
                          jax.tree.leaves(shardings["opt_state"], is_leaf=is_sh)):
    key = jax.tree_util.keystr(path)
    name = "/".join(str(k.key) for k in path if isinstance(k, jax.tree_util.DictKey)
                    and str(k.key) not in ("default", "slow"))
    if ".mu[" in key or ".nu[" in key:
      moments += 1
      assert params[name][0] == x.shape and s.spec == params[name][1].spec, key
    else:
      assert tuple(s.spec) == (), key
  labels = jax.tree.leaves(st.param_labels(abstract["params"], opt))
  assert moments == 2 * sum(g in ("default", "slow") for g in labels)  # frozen: no moments
  assert 0 < labels.count("default") < len(labels)
  assert any(tuple(s.spec) != () for _, s in params.values())


def test_make_mesh_is_auto_and_keeps_the_cpu_device_order():
  mesh = sh.make_mesh(dict(data=2, fsdp=-1, tensor=2))
  assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
  assert set(mesh.axis_types) == {jax.sharding.AxisType.Auto}
  assert [d.id for d in mesh.devices.flat] == [d.id for d in jax.devices()]


def test_global_batch_round_trip():
  mesh = sh.make_mesh(dict(data=2, fsdp=2, tensor=2))
  local = {"tokens": np.arange(8 * 5, dtype=np.int32).reshape(8, 5),
           "encoders": {"v": {"pixels": np.ones((8, 1, 2, 2, 3), np.float32)}}}
  g = sh.global_batch(local, mesh)
  assert g["tokens"].sharding.spec == jax.sharding.PartitionSpec(("data", "fsdp"))
  assert g["tokens"].addressable_shards[0].data.shape == (2, 5)
  back = sh.to_host(g)
  np.testing.assert_array_equal(back["tokens"], local["tokens"])


def test_flops_per_example_matches_hand_count():
  cfg = presets.model_config("tiny")
  d, m, V, L = 32, 64, 100, 16
  cfg.decoder.update(vocab_size=V, num_layers=1, emb_dim=d, num_heads=2, mlp_dim=m, max_len=L)
  e, f, s, p = 16, 48, 16, 8
  cfg.encoders = {"vision": presets.vit(image_size=s, patch_size=p, num_layers=1, emb_dim=e,
                                        num_heads=2, mlp_dim=f,
                                        connector=presets.connector("linear"))}
  cfg = mlc.ConfigDict(cfg)
  opt = config_defaults.optimizer()
  opt.groups = {"vis": dict(regex="^encoders_vision/", frozen=True, lr_mult=1.0)}
  _, abstract = _abstract(cfg, opt)
  trainable = st.trainable_mask(abstract["params"], opt)
  got = metrics_lib.flops_per_example(cfg, abstract["params"], trainable, L)
  T = (s // p) ** 2 + 1
  dec = 6 * (4 * d * d + 2 * d * m + V * d) * L + 12 * L * L * d
  vit = 2 * (4 * e * e + 2 * e * f + p * p * 3 * e) * T + 4 * T * T * e   # frozen: forward only
  conn = 6 * e * d * T
  assert got == pytest.approx(dec + vit + conn, rel=1e-12)


def test_flops_per_example_counts_every_frame_of_a_video_encoder():
  """The per-frame ViT works on frames x tokens per clip (context: one frame),
  the temporal layers on each clip's frames (context: frames); a frozen ViT
  counts forward only."""
  cfg = presets.model_config("tiny")
  d, m, V, L = 32, 64, 100, 16
  cfg.decoder.update(vocab_size=V, num_layers=1, emb_dim=d, num_heads=2, mlp_dim=m, max_len=L)
  e, f, s, p, F, N, K = 16, 48, 16, 8, 4, 2, 2
  cfg.encoders = {"clip": presets.video(image_size=s, patch_size=p, num_layers=1, emb_dim=e,
                                        num_heads=2, mlp_dim=f, frames=F, max_items=N,
                                        temporal_layers=1, num_vectors=K,
                                        connector=presets.connector("linear"))}
  cfg = mlc.ConfigDict(cfg)
  opt = config_defaults.optimizer()
  opt.groups = {"vit": dict(regex="^encoders_clip/video/vit/", frozen=True, lr_mult=1.0)}
  _, abstract = _abstract(cfg, opt)
  trainable = st.trainable_mask(abstract["params"], opt)
  got = metrics_lib.flops_per_example(cfg, abstract["params"], trainable, L)
  T = (s // p) ** 2 + 1
  dec = 6 * (4 * d * d + 2 * d * m + V * d) * L + 12 * L * L * d
  vit = N * F * (2 * (4 * e * e + 2 * e * f + p * p * 3 * e) * T + 4 * T * T * e)  # frozen
  temporal = 3 * N * (2 * (4 * e * e + 2 * e * f) * F + 4 * F * F * e)  # pool "frames": 1 per frame
  conn = 6 * e * d * N * K
  assert got == pytest.approx(dec + vit + temporal + conn, rel=1e-12)


def test_fsdp_check_counts_one_layer_of_a_scanned_stack():
  # A stacked bias (layers x heads x head_dim) is as small per layer as the
  # unrolled one; only its leading `layers` axis makes it look large.
  mesh = sh.make_mesh(dict(data=2, fsdp=2, tensor=2))
  cfg = presets.model_config("tiny")
  cfg.decoder.scan_layers = True
  boxed, abstract = _abstract(cfg, config_defaults.optimizer())
  shardings = sh.state_shardings(boxed, mesh, sh.rules_from_config(presets.logical_rules()))
  bias = abstract["params"]["decoder"]["layers"]["attn"]["query"]["bias"]
  per_layer = int(np.prod(bias.shape[1:]))
  assert bias.shape[0] == cfg.decoder.num_layers and per_layer < int(np.prod(bias.shape))
  # Threshold between one layer's size and the stacked size: the bias passes.
  assert "decoder/layers/attn/query/bias" not in sh.unsharded_large_params(
      abstract["params"], shardings["params"], mesh, per_layer + 1)
  # At one layer's size it is reported (it is not split over fsdp).
  assert "decoder/layers/attn/query/bias" in sh.unsharded_large_params(
      abstract["params"], shardings["params"], mesh, per_layer)
