"""Converters on scanned (stacked) param trees: HF CLIP / BERT / GPT-2 import
into scanned models with logit parity, an unrolled import loaded into a
scanned model (params_io `like`), and the GPT-2 export round trip from a
scanned decoder (bit-exact back to the stacked tree)."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import ml_collections  # noqa: E402

from metalm_jax import params_io  # noqa: E402
from metalm_jax.convert import __main__ as cli  # noqa: E402
from metalm_jax.convert import hf, hf_gpt2  # noqa: E402
from metalm_jax.models import layout  # noqa: E402
from metalm_jax.models.decoder import Decoder  # noqa: E402
from tests.hf_fixtures import (BERT_CFGS, CLIP_CFGS, GPT2_CFGS, RTOL,  # noqa: E402
                               build_hf, save_hf)

SCAN_CASES = [("vision", "CLIPVisionConfig", "CLIPVisionModel", CLIP_CFGS[1]),
              ("text", "BertConfig", "BertModel", BERT_CFGS[1]),
              ("decoder", "GPT2Config", "GPT2LMHeadModel", GPT2_CFGS[1])]


@pytest.mark.parametrize("component,cfg_cls,model_cls,kw", SCAN_CASES,
                         ids=[c[2] for c in SCAN_CASES])
def test_scanned_import_matches_hf(tmp_path, component, cfg_cls, model_cls, kw):
  d = save_hf(build_hf(cfg_cls, model_cls, kw), tmp_path / "hf", seed=7)
  imp = hf.load_hf(d, component, scan_layers=True)
  assert imp.section.scan_layers
  flat = params_io.flatten(imp.tree)
  assert not any("layers_" in k for k in flat)
  assert any(k.split("/")[-4:-3] == ["layers"] or "/layers/" in k for k in flat)
  r = hf.check_hf(d, component, seed=1, batch=2, scan_layers=True)
  assert r["ok"] and r["max_ref"] > 0.1, r


def _scanned_decoder(section):
  s = ml_collections.ConfigDict(section)
  s.scan_layers = True
  model = Decoder(ml_collections.FrozenConfigDict(s))
  t = np.zeros((1, 4), np.int32)
  abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), t, t, t + 1))["params"]
  return s, model, nn.meta.unbox(abstract)


def test_unrolled_import_loads_into_a_scanned_decoder(tmp_path):
  d = save_hf(build_hf("GPT2Config", "GPT2LMHeadModel", GPT2_CFGS[1]), tmp_path / "hf", seed=8)
  out = str(tmp_path / "imported")
  assert cli.main(["import-hf", f"--model_dir={d}", "--component=decoder", f"--out={out}"]) == 0
  _, meta = params_io.load_params(out)
  section, model, abstract = _scanned_decoder(meta["section"])
  params, _ = params_io.load_params(out, like=abstract)
  assert jax.tree.map(np.shape, params) == jax.tree.map(lambda s: tuple(s.shape), abstract)
  tokens = np.random.default_rng(0).integers(0, section.vocab_size, (2, 11)).astype(np.int32)
  pos = np.broadcast_to(np.arange(11, dtype=np.int32), tokens.shape)
  ours = np.asarray(jax.jit(model.apply)({"params": params}, tokens, pos, np.ones_like(tokens)))
  ref_model = transformers.GPT2LMHeadModel.from_pretrained(d).eval()
  with torch.no_grad():
    ref = ref_model(input_ids=torch.from_numpy(tokens.astype(np.int64))).logits.numpy()
  assert np.abs(ours - ref).max() / np.abs(ref).max() <= RTOL


def test_gpt2_round_trip_from_a_scanned_decoder(tmp_path):
  d = save_hf(build_hf("GPT2Config", "GPT2LMHeadModel", GPT2_CFGS[2]), tmp_path / "hf", seed=9)
  imp = hf.load_hf(d, "decoder", scan_layers=True)   # an untied lm_head too
  stacked = imp.tree
  assert stacked["layers"]["mlp"]["wi"]["kernel"].shape[0] == GPT2_CFGS[2]["n_layer"]
  out = hf_gpt2.save_gpt2(str(tmp_path / "gpt2"), imp.section, stacked)
  back = hf.load_hf(out, "decoder", scan_layers=True)
  assert back.skipped == []
  a, b = params_io.flatten(stacked), params_io.flatten(back.tree)
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  # The exported dir is the HF model we started from, weight for weight.
  src = transformers.GPT2LMHeadModel.from_pretrained(d).state_dict()
  dst = transformers.GPT2LMHeadModel.from_pretrained(out).state_dict()
  for k, v in src.items():
    if k.endswith(".attn.bias") or k.endswith(".attn.masked_bias"):
      continue
    np.testing.assert_array_equal(dst[k].numpy(), v.numpy(), err_msg=k)


def test_layout_match_and_errors():
  x = lambda *s: np.arange(np.prod(s), dtype=np.float32).reshape(s)
  unrolled = {"enc": {"emb": x(2), "layers_0": {"w": x(2, 3)}, "layers_1": {"w": x(2, 3) + 1}},
              "dec": {"layers_0": {"w": x(1)}}}
  stacked = layout.stack(unrolled)
  np.testing.assert_array_equal(stacked["enc"]["layers"]["w"][1], x(2, 3) + 1)
  assert stacked["enc"]["emb"] is unrolled["enc"]["emb"]
  # Only the stacks `like` has scanned are converted.
  mixed = layout.match(unrolled, {"enc": stacked["enc"], "dec": unrolled["dec"]})
  assert set(mixed["enc"]) == {"emb", "layers"} and set(mixed["dec"]) == {"layers_0"}
  back = layout.match(stacked, unrolled)
  np.testing.assert_array_equal(back["enc"]["layers_1"]["w"], unrolled["enc"]["layers_1"]["w"])
  with pytest.raises(ValueError, match=r"enc: layers \[0, 2\] are not numbered 0..1"):
    layout.stack({"enc": {"layers_0": {"w": x(1)}, "layers_2": {"w": x(1)}}})
  with pytest.raises(ValueError, match="disagree on the layer count"):
    layout.unstack({"layers": {"a": x(2, 1), "b": x(3, 1)}})
  assert layout.slice_names("e/layers/attn/k", 2) == ["e/layers_0/attn/k", "e/layers_1/attn/k"]


def test_checkpoint_params_restore_into_the_other_layout(tmp_path):
  """init_from an Orbax checkpoint written unrolled, into a scanned model's
  sharded target (and back): values equal, target shardings kept."""
  import orbax.checkpoint as ocp
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
  from metalm_jax.train import checkpoint as ckpt_lib
  rng = np.random.default_rng(0)
  unrolled = {"enc": {"emb": rng.normal(size=(4,)).astype(np.float32),
                      **{f"layers_{i}": {"w": rng.normal(size=(4, 6)).astype(np.float32)}
                         for i in range(3)}}}
  ocp.PyTreeCheckpointer().save(str(tmp_path / "u" / "state"), {"params": unrolled, "step": 3})
  mesh = Mesh(np.asarray(jax.devices()[:2]), ("fsdp",))
  sds = lambda shape, spec: jax.ShapeDtypeStruct(shape, np.float32,
                                                 sharding=NamedSharding(mesh, P(*spec)))
  target = {"enc": {"emb": sds((4,), (None,)), "layers": {"w": sds((3, 4, 6), (None, "fsdp"))}}}
  got = ckpt_lib.restore_params(str(tmp_path / "u"), target)
  np.testing.assert_array_equal(np.asarray(got["enc"]["layers"]["w"]),
                                np.stack([unrolled["enc"][f"layers_{i}"]["w"] for i in range(3)]))
  assert got["enc"]["layers"]["w"].sharding.spec == P(None, "fsdp")
  ocp.PyTreeCheckpointer().save(str(tmp_path / "s" / "state"),
                                {"params": jax.tree.map(np.asarray, got), "step": 3})
  back = ckpt_lib.restore_params(str(tmp_path / "s"), layout.unstack(target))
  np.testing.assert_array_equal(np.asarray(back["enc"]["layers_2"]["w"]),
                                unrolled["enc"]["layers_2"]["w"])
  assert back["enc"]["layers_2"]["w"].sharding.is_equivalent_to(NamedSharding(mesh, P("fsdp")), 2)
