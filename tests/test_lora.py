"""LoRA adapters on the decoder (metalm_jax/models/lora.py): a fresh adapter
changes nothing; a projection with an adapter against a float64 numpy
reference; trainer steps move only the adapters and Adam keeps moments only
for them; merged export against the unmerged model (GPT-2 and Llama shaped,
scanned and unrolled), the serving export and the HF export of the merged
decoder; the KV cache with adapters; config errors naming the field.

Tolerances: a projection against float64 numpy 1e-5 absolute + 1e-5
relative (measured 7.5e-6 absolute on outputs up to 57, 1.3e-7 relative);
merged against unmerged logits in float32 2e-5 absolute + 1e-5 relative
(the merge is summed in float64 and cast once; measured 1.8e-7 to 4.9e-7
absolute on logits up to 0.41: float32 rounding of the merged kernels and
another summation order); cached decoding against the full forward 1e-5
(as tests/test_decoder_families.py)."""
import json
import logging

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from metalm_jax import params_io, presets
from metalm_jax.convert import export, hf_export, hf_io, lora_export
from metalm_jax.models import layers, lora as lora_lib, metalm
from metalm_jax.models.decoder import Decoder
from metalm_jax.train import checkpoint as ckpt_lib
from metalm_jax.train import state as state_lib
from metalm_jax.train import trainer as trainer_lib
from tests import train_standin as S

SMALL = dict(vocab_size=61, num_layers=2, emb_dim=32, num_heads=4, mlp_dim=48, max_len=32)
ALL = {"gpt2": ["query", "key", "value", "out", "wi", "wo"],
       "llama": ["query", "key", "value", "out", "wi_gate", "wi_up", "wo"]}
MERGE_ATOL, MERGE_RTOL = 2e-5, 1e-5


def _section(family, scan=False, enabled=True, **lora):
  lora = {**dict(enabled=enabled, rank=4, alpha=6.0, targets=ALL[family]), **lora}
  return presets.decoder_family(family, **SMALL, scan_layers=scan, lora=lora)


def _decoder(section):
  return Decoder(ml_collections.FrozenConfigDict(section))


def _init(model, seed=0):
  t = jnp.zeros((1, 4), jnp.int32)
  init = jax.jit(model.init, compiler_options=metalm.FAST_COMPILE)
  return jax.tree.map(np.asarray, nn.meta.unbox(init(jax.random.key(seed), t, t, t + 1)
                                                ["params"]))


def _logits(model, params, tok, pos, seg):
  return np.asarray(jax.jit(model.apply)({"params": params}, tok, pos, seg))


def _tokens(vocab, b=2, length=12, seed=0):
  tok = np.random.default_rng(seed).integers(0, vocab, (b, length)).astype(np.int32)
  seg = np.ones((b, length), np.int32)
  seg[1, :3] = 0  # left padding in row 1
  pos = np.maximum(np.cumsum(seg, 1) - 1, 0).astype(np.int32)
  return tok, pos, seg


def _randomize_adapters(params, seed=1, std=0.2):
  """B (zero at init) and A drawn at random, so the adapters do something."""
  rng = np.random.default_rng(seed)
  def draw(path, x):
    name = jax.tree_util.keystr(path)
    if lora_lib.A_NAME in name or lora_lib.B_NAME in name:
      return (std * rng.standard_normal(x.shape)).astype(np.float32)
    return x
  return jax.tree_util.tree_map_with_path(draw, params)


def _adapter_names(tree):
  out = []
  state_lib.map_with_names(lambda n, x: out.append(n) if n.split("/")[-1] in (
      lora_lib.A_NAME, lora_lib.B_NAME) else None, tree)
  return out


@pytest.mark.parametrize("family,scan", [("gpt2", False), ("llama", True)])
def test_fresh_adapter_gives_the_base_logits_exactly(family, scan):
  model = _decoder(_section(family, scan))
  params = _init(model)
  names = _adapter_names(params)
  layers_n = 1 if scan else SMALL["num_layers"]
  assert len(names) == 2 * len(ALL[family]) * layers_n
  base_model = _decoder(_section(family, scan, enabled=False))
  base_init = _init(base_model)
  base, adapters = lora_lib.split(params)
  if not scan:  # adapters are created after kernel and bias: the base inits as without LoRA
    jax.tree.map(np.testing.assert_array_equal, base, base_init)
  assert jax.tree.structure(base) == jax.tree.structure(base_init)
  for path, x in jax.tree_util.tree_leaves_with_path(adapters):
    is_b = lora_lib.B_NAME in jax.tree_util.keystr(path)
    assert (not x.any()) if is_b else x.std() > 0, path
  tok, pos, seg = _tokens(SMALL["vocab_size"])
  got = _logits(model, params, tok, pos, seg)
  want = _logits(base_model, base, tok, pos, seg)
  np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("n_in,out_shape,axes", [
    (1, (4, 8), ("embed", "heads", "kv")),        # query
    (2, (32,), ("heads", "kv", "embed")),         # out
])
def test_projection_with_adapter_matches_float64_numpy(n_in, out_shape, axes):
  lora = lora_lib.Lora(rank=3, alpha=5.0, targets=("x",))
  dense = layers.DenseND(out_shape, axes, n_in=n_in, lora=lora)
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, 5) + ((32,) if n_in == 1 else (4, 8))).astype(np.float32)
  boxed = dense.init(jax.random.key(0), x)["params"]
  # Logical axes: A takes the kernel's input axes, B its output axes; rank replicated.
  assert boxed["lora_a"].names == axes[:n_in] + ("lora_rank",)
  assert boxed["lora_b"].names == ("lora_rank",) + axes[n_in:]
  spec = nn.logical_to_mesh_axes(boxed["lora_a"].names, presets.logical_rules())
  kernel_spec = nn.logical_to_mesh_axes(boxed["kernel"].names, presets.logical_rules())
  assert tuple(spec)[:n_in] == tuple(kernel_spec)[:n_in] and tuple(spec)[-1] is None
  params = jax.tree.map(lambda v: rng.standard_normal(v.shape).astype(np.float32),
                        nn.meta.unbox(boxed))
  got = np.asarray(dense.apply({"params": params}, x))
  f = lambda a: np.asarray(a, np.float64)
  w, a, b = f(params["kernel"]), f(params["lora_a"]), f(params["lora_b"])
  xs = f(x).reshape(10, -1)
  ref = (xs @ w.reshape(xs.shape[1], -1) + f(params["bias"]).reshape(-1)
         + (5.0 / 3.0) * (xs @ a.reshape(xs.shape[1], 3)) @ b.reshape(3, -1))
  np.testing.assert_allclose(got.reshape(10, -1), ref, atol=1e-5, rtol=1e-5)


def test_adapter_dropout_drops_the_adapter_input_only_in_training():
  lora = lora_lib.Lora(rank=2, alpha=2.0, targets=("x",), dropout=0.5)
  dense = layers.DenseND((6,), ("embed", "mlp"), lora=lora)
  x = np.ones((4, 16), np.float32)
  params = _randomize_adapters(jax.tree.map(np.asarray, nn.meta.unbox(
      dense.init(jax.random.key(0), x)["params"])))
  base = x @ params["kernel"] + params["bias"]
  full = base + 1.0 * (x @ params["lora_a"]) @ params["lora_b"]
  np.testing.assert_allclose(dense.apply({"params": params}, x), full, rtol=1e-5, atol=1e-5)
  train = lambda k: np.asarray(dense.apply({"params": params}, x, False,
                                           rngs={"dropout": jax.random.key(k)}))
  a, b = train(1), train(2)
  assert not np.allclose(a, b) and not np.allclose(a, full)
  # What dropout changes goes through the adapter: B's row space.
  resid = (a - base) @ np.linalg.pinv(params["lora_b"]) @ params["lora_b"]
  np.testing.assert_allclose(resid, a - base, atol=1e-4)


@pytest.mark.parametrize("family,scan", [("gpt2", False), ("gpt2", True), ("llama", False),
                                         ("llama", True)])
def test_merged_params_give_the_unmerged_logits(family, scan):
  section = _section(family, scan)
  model = _decoder(section)
  params = _randomize_adapters(_init(model))
  tok, pos, seg = _tokens(SMALL["vocab_size"])
  want = _logits(model, params, tok, pos, seg)
  cfg, merged = lora_export.merge_model({"decoder": section.to_dict()}, {"decoder": params})
  assert cfg["decoder"]["lora"]["enabled"] is False
  assert not lora_lib.has_adapters(merged)
  base_apply = jax.jit(_decoder(ml_collections.ConfigDict(cfg["decoder"])).apply)
  got = np.asarray(base_apply({"params": merged["decoder"]}, tok, pos, seg))
  base, _ = lora_lib.split(params)
  plain = np.asarray(base_apply({"params": base}, tok, pos, seg))
  assert np.abs(plain - want).max() > 1e-2  # the adapters matter
  np.testing.assert_allclose(got, want, atol=MERGE_ATOL, rtol=MERGE_RTOL)


def test_kv_cache_with_adapters_equals_full_forward():
  section = _section("llama", scan=True)
  model = _decoder(section)
  params = _randomize_adapters(_init(model))
  tok, pos, seg = _tokens(SMALL["vocab_size"], length=10, seed=3)
  full = np.asarray(jax.jit(model.apply)({"params": params}, tok, pos, seg))
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), tok, pos, seg, decode=True))
  cache = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes["cache"])
  step = jax.jit(lambda c, t, p, s: model.apply({"params": params, "cache": c}, t, p, s,
                                                decode=True, mutable=["cache"]))
  outs = []
  for t in range(0, 10, 2):  # two tokens per step
    logits, mut = step(cache, tok[:, t:t + 2], pos[:, t:t + 2], seg[:, t:t + 2])
    cache = mut["cache"]
    outs.append(np.asarray(logits))
  inc = np.concatenate(outs, 1)
  np.testing.assert_allclose(inc[seg > 0], full[seg > 0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("lora,field", [
    (dict(rank=0), "model.decoder.lora.rank=0"),
    (dict(targets=["query", "q_proj"]), "model.decoder.lora.targets="),
    (dict(targets=["wi_gate"]), "model.decoder.lora.targets="),   # a gated-MLP name on GPT-2
    (dict(targets=[]), "model.decoder.lora.targets=\\[\\]"),
    (dict(alpha=0.0), "model.decoder.lora.alpha=0.0"),
    (dict(dropout=1.0), "model.decoder.lora.dropout=1.0"),
    (dict(init="xavier"), "model.decoder.lora.init='xavier'"),
    (dict(freeze="encoders"), "model.decoder.lora.freeze='encoders'"),
])
def test_bad_lora_config_fails_at_model_build_naming_the_field(lora, field):
  cfg = presets.model_config("tiny")
  cfg.decoder.lora.update(enabled=True, **lora)
  with pytest.raises(ValueError, match=field):
    metalm.build_model(cfg)
  cfg.decoder.lora.enabled = False  # off: the other fields are not read
  metalm.build_model(cfg)


def _abstract(model_cfg):
  model = metalm.build_model(model_cfg)
  return nn.meta.unbox(metalm.abstract_variables(model)["params"])


def test_lora_groups_freeze_the_decoder_base_and_respect_explicit_groups():
  """freeze="decoder": adapters train, the decoder's base is frozen, encoders
  and connectors train; the paper's frozen-decoder group still freezes the
  base but not the adapters; an explicit trainable group wins over LoRA's
  freezing; freeze="all" leaves only the adapters."""
  cfg = S.tiny_model_cfg()
  cfg.decoder.lora.update(enabled=True, targets=["query", "value", "wi"])
  params = _abstract(cfg)
  def trained(opt):
    mask = state_lib.trainable_mask(params, state_lib.resolve_groups(opt, cfg))
    flat = {}
    state_lib.map_with_names(lambda n, x: flat.setdefault(n, None), params)
    return {n for n, t in zip(flat, jax.tree.leaves(mask)) if t}
  adapters = set(_adapter_names(params))
  assert len(adapters) == 2 * 3 * cfg.decoder.num_layers
  opt = S.tiny_train_config().optimizer
  got = trained(opt)
  assert adapters <= got
  assert not any(n.startswith("decoder/") for n in got - adapters)
  assert {n.split("/")[0] for n in got - adapters} == {"encoders_vision", "connectors_vision"}
  opt.groups = {"frozen_decoder": dict(regex="^decoder/", frozen=True, lr_mult=1.0),
                "head": dict(regex="^decoder/final_norm/", frozen=False, lr_mult=0.5)}
  opt.groups.frozen_decoder.regex = "^decoder/(?!final_norm/)"
  got = trained(opt)
  assert got - adapters == {n for n in got if not n.startswith("decoder/")} | {
      "decoder/final_norm/scale", "decoder/final_norm/bias"}
  opt.groups = {}
  cfg.decoder.lora.freeze = "all"
  assert trained(opt) == adapters
  with pytest.raises(ValueError, match="optimizer.groups.lora_adapters: the name is reserved"):
    opt.groups = {"lora_adapters": dict(regex="x", frozen=False, lr_mult=1.0)}
    state_lib.resolve_groups(opt, cfg)


def test_the_frozen_decoder_nli_recipe_with_adapters_on_top():
  """configs/finetune_nli.py (decoder and vision frozen by an explicit group;
  text encoder and connector trained) with LoRA on: the adapters train too,
  the interface's base stays frozen, and Adam's moments exist only for the
  trained params."""
  from configs import finetune_nli
  c = finetune_nli.get_config("size=tiny")
  c.model.decoder.lora.enabled = True
  params = _abstract(c.model)
  opt = state_lib.resolve_groups(c.optimizer, c.model)
  names = []
  state_lib.map_with_names(lambda n, x: names.append(n), params)
  mask = jax.tree.leaves(state_lib.trainable_mask(params, opt))
  trained = {n for n, t in zip(names, mask) if t}
  want = set(_adapter_names(params)) | {
      n for n in names if n.split("/")[0] in ("encoders_text", "connectors_text")}
  assert trained == want and any(n.startswith("decoder/") for n in trained)
  opt_state = jax.eval_shape(state_lib.make_optimizer(opt, 10).init, params)
  moments = [x for x in jax.tree.leaves(opt_state) if len(x.shape)]
  assert len(moments) == 2 * len(trained)


def test_trainer_moves_only_adapters_and_keeps_moments_only_for_them(tmp_path, caplog):
  """A scanned LoRA decoder initialised from a base params dir (unrolled, no
  adapters: they keep their fresh init), freeze="all": after 3 steps every
  base param is bit-identical and every adapter moved; Adam's state holds
  mu and nu for the adapters and nothing else."""
  one = jax.devices()[:1]
  base_cfg = S.tiny_model_cfg()
  base = jax.tree.map(np.asarray, jax.device_get(nn.meta.unbox(metalm.init_variables(
      metalm.build_model(base_cfg), jax.random.key(3))["params"])))
  params_io.save_params(str(tmp_path / "base"), base)
  c = S.tiny_train_config(total_steps=3, eval_every=0)
  c.model.decoder.scan_layers = True
  c.model.decoder.lora.update(enabled=True, rank=2, targets=["query", "out", "wi", "wo"],
                              freeze="all")
  c.init_from = str(tmp_path / "base")
  c.checkpoint.async_save = False
  c.mesh.update(data=1, fsdp=1, tensor=1)
  work = str(tmp_path / "run")
  caplog.set_level(logging.INFO)
  t = trainer_lib.Trainer(c, work, data=S, devices=one)
  logged = [r.getMessage() for r in caplog.records if "optimizer group" in r.getMessage()]
  assert any(m.startswith("optimizer group lora_adapters:") and "trained" in m and
             "in 8 arrays" in m for m in logged), logged
  assert any(m.startswith("optimizer group lora_frozen_base:") and "frozen" in m
             for m in logged), logged
  abstract = t.abstract_state
  names = _adapter_names(abstract["params"])
  assert len(names) == 8  # 4 projections x (A, B), stacked over the layers
  moments = [(jax.tree_util.keystr(p), x) for p, x in
             jax.tree_util.tree_leaves_with_path(abstract["opt_state"]) if len(x.shape)]
  assert len(moments) == 2 * len(names)  # mu and nu, nothing for frozen params
  assert all("lora_a" in p or "lora_b" in p for p, _ in moments), [p for p, _ in moments]
  fresh = jax.device_get(t.initial_state()["params"])
  t.run()
  target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(
      x.shape, x.dtype, sharding=jax.sharding.SingleDeviceSharding(one[0])), abstract["params"])
  final = jax.tree.map(np.asarray, jax.device_get(ckpt_lib.restore_params(work, target)))
  final_base, final_adapters = lora_lib.split(final)
  from metalm_jax.models import layout
  jax.tree.map(np.testing.assert_array_equal, layout.unstack(final_base), base)
  _, fresh_adapters = lora_lib.split(fresh)
  for (path, x1), x0 in zip(jax.tree_util.tree_leaves_with_path(final_adapters),
                            jax.tree.leaves(fresh_adapters)):
    assert np.abs(x1 - np.asarray(x0)).min() > 0, jax.tree_util.keystr(path)


def test_init_from_a_checkpoint_without_adapters_keeps_fresh_ones(tmp_path):
  import orbax.checkpoint as ocp
  cfg = S.tiny_model_cfg()
  base = jax.tree.map(np.asarray, nn.meta.unbox(metalm.init_variables(
      metalm.build_model(cfg), jax.random.key(5))["params"]))
  step = tmp_path / "ckpt" / "7"
  ocp.PyTreeCheckpointer().save(str(step / "state"), {"params": base})
  cfg.decoder.lora.update(enabled=True, targets=["key"])
  one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=one),
                          _abstract(cfg))
  got = jax.device_get(ckpt_lib.restore_params(str(step), abstract))
  assert not lora_lib.has_adapters(got)
  jax.tree.map(np.testing.assert_array_equal, got, base)
  filled, n = lora_lib.fill_missing(got, jax.tree.map(np.zeros_like, abstract))
  assert n == 2 * cfg.decoder.num_layers
  assert jax.tree.structure(filled) == jax.tree.structure(abstract)


def _export_cfg(scan):
  cfg = presets.model_config("tiny")
  cfg.encoders = {}
  cfg.decoder = _section("llama", scan)
  return cfg


def test_serving_and_hf_export_merge_or_keep_the_adapters_apart(tmp_path):
  """export_model merges by default (params, config and the HF dir are a
  plain decoder whose logits equal the LoRA model's) and with
  lora="separate" keeps the adapters (params.safetensors holds them, lora/
  holds only them, the HF dir holds the base)."""
  cfg = _export_cfg(scan=True)
  model = metalm.build_model(cfg)
  params = _randomize_adapters(jax.tree.map(np.asarray, nn.meta.unbox(
      metalm.init_variables(model, jax.random.key(0))["params"])))
  tok, pos, seg = _tokens(SMALL["vocab_size"])
  dec = _decoder(cfg.decoder)
  want = _logits(dec, params["decoder"], tok, pos, seg)

  out = str(tmp_path / "merged")
  export.export_model(cfg, params, out, seq_len=16, platforms=("cpu",))
  loaded, meta = params_io.load_params(out)
  assert not lora_lib.has_adapters(loaded)
  assert meta["model"]["decoder"]["lora"]["enabled"] is False
  assert meta["lora"] == {"mode": "merge", "rank": 4, "alpha": 6.0, "scale": 1.5,
                          "targets": ALL["llama"]}
  merged_dec = _decoder(ml_collections.ConfigDict(meta["model"]["decoder"]))
  got = _logits(merged_dec, loaded["decoder"], tok, pos, seg)
  np.testing.assert_allclose(got, want, atol=MERGE_ATOL, rtol=MERGE_RTOL)
  # The HF dir holds the plain decoder's export of the merged params.
  _, _, plain_sd = hf_export.hf_decoder(merged_dec.cfg, loaded["decoder"])
  _same_weights(tmp_path / "merged" / meta["hf_decoder"]["dir"], plain_sd)

  sep = str(tmp_path / "separate")
  export.export_model(cfg, params, sep, seq_len=16, platforms=("cpu",), lora="separate",
                      hf_decoder=True)
  full, meta = params_io.load_params(sep)
  assert meta["model"]["decoder"]["lora"]["enabled"] is True and meta["lora"]["dir"] == "lora"
  jax.tree.map(np.testing.assert_array_equal, full, params)
  only, ad_meta = params_io.load_params(str(tmp_path / "separate" / "lora"))
  assert sorted(params_io.flatten(only)) == sorted(
      "decoder/" + n for n in _adapter_names(params["decoder"]))
  assert ad_meta["component"] == "lora" and ad_meta["scale"] == 1.5
  _, _, base_sd = hf_export.hf_decoder(merged_dec.cfg, lora_lib.split(params["decoder"])[0])
  _same_weights(tmp_path / "separate" / meta["hf_decoder"]["dir"], base_sd)


def _same_weights(hf_dir, state_dict):
  weights = hf_io.read_weights(str(hf_dir))
  assert sorted(weights) == sorted(state_dict)
  for k, v in state_dict.items():
    np.testing.assert_array_equal(weights[k], v, err_msg=k)


def test_hf_export_of_a_lora_tree_equals_that_of_the_merged_tree(tmp_path):
  section = _section("gpt2", scan=False)
  params = _randomize_adapters(_init(_decoder(section)))
  fam, cfg, sd = hf_export.hf_decoder(section, params)
  merged = lora_lib.merge(params, 6.0 / 4)
  plain = _section("gpt2", scan=False, enabled=False)
  fam2, cfg2, sd2 = hf_export.hf_decoder(plain, merged)
  assert (fam, cfg) == (fam2, cfg2) and sorted(sd) == sorted(sd2)
  for k in sd:
    np.testing.assert_array_equal(sd[k], sd2[k])
  _, _, base_sd = hf_export.hf_decoder(section, params, lora="separate")
  assert any(not np.array_equal(base_sd[k], sd[k]) for k in sd)
  with pytest.raises(ValueError, match="lora.enabled False"):
    hf_export.hf_decoder(plain, params)
  # The CLI on a params dir with adapters: merged by default; separate writes
  # the base and the adapters apart.
  from metalm_jax.convert import __main__ as cli
  src = str(tmp_path / "dec")
  params_io.save_params(src, params, {"component": "decoder", "section": section.to_dict()})
  assert cli.main(["export-hf", f"--params_dir={src}", f"--out={tmp_path / 'm'}"]) == 0
  _same_weights(tmp_path / "m", sd)
  assert cli.main(["export-hf", f"--params_dir={src}", f"--out={tmp_path / 's'}",
                   "--lora=separate"]) == 0
  _same_weights(tmp_path / "s", base_sd)
  only, _ = params_io.load_params(str(tmp_path / "s" / "lora"))
  assert sorted(params_io.flatten(only)) == sorted("decoder/" + n for n in _adapter_names(params))


def test_an_older_run_without_the_lora_section_resumes_while_lora_is_off(tmp_path):
  from metalm_jax import storage
  from metalm_jax.train import run_config
  now = json.loads(json.dumps(S.tiny_train_config().to_dict()))  # as config.json holds it
  old = json.loads(json.dumps(now))
  del old["model"]["decoder"]["lora"]
  storage.write_json(str(tmp_path / run_config.RUN_CONFIG_FILE), old)
  assert run_config.check_resume(str(tmp_path), now) == []
  now["model"]["decoder"]["lora"]["enabled"] = True
  with pytest.raises(run_config.ConfigDriftError, match="model.decoder.lora.enabled"):
    run_config.check_resume(str(tmp_path), now)
