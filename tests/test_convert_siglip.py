"""SigLIP vision tower import (convert/hf_siglip.py) on random small HF models
built offline: parity of the docked tokens and of the attention-pooled vector,
refusals naming the HF field, the CLI option, docking into MetaLM, FLOPs.

Metric (the converters' float32 tolerance): rel = max|ours - ref| / max|ref|
<= 1e-4, ref = HF's `last_hidden_state` (readout "tokens", already
post-LayerNormed) or `pooler_output` (readout "map").
"""
import json
import os

import flax.linen as nn
import jax
import ml_collections as mlc
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from metalm_jax import batch as batch_lib  # noqa: E402
from metalm_jax import params_io, presets  # noqa: E402
from metalm_jax.convert import __main__ as cli  # noqa: E402
from metalm_jax.convert import hf, hf_siglip  # noqa: E402
from metalm_jax.models import metalm  # noqa: E402
from metalm_jax.models.connector import CONNECTORS  # noqa: E402
from tests.hf_fixtures import RTOL, save_hf  # noqa: E402
from tests.model_fixtures import build, forward, random_batch, small_model_cfg  # noqa: E402

# Odd sizes on purpose: 48 px / 8 px patches (36 tokens), 40 px / 10 px (16),
# 30 px / 7 px (16; HF does not see the last 2 rows and columns, as so400m/14 at
# 384 px: ours is 28 px, HF gets a random margin).
SIGLIP_CFGS = {
    "48-8": dict(image_size=48, patch_size=8, hidden_size=32, intermediate_size=64,
                 num_hidden_layers=2, num_attention_heads=4),  # gelu_pytorch_tanh, eps 1e-6
    "40-10": dict(image_size=40, patch_size=10, hidden_size=48, intermediate_size=80,
                  num_hidden_layers=3, num_attention_heads=3, hidden_act="gelu",
                  layer_norm_eps=1e-5),
    "30-7": dict(image_size=30, patch_size=7, hidden_size=32, intermediate_size=48,
                 num_hidden_layers=1, num_attention_heads=2),
}


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
  """One saved SiglipVisionModel dir per config (every weight perturbed)."""
  root = tmp_path_factory.mktemp("siglip")
  return {name: save_hf(transformers.SiglipVisionModel(transformers.SiglipVisionConfig(**kw)),
                        root / name, seed=i)
          for i, (name, kw) in enumerate(SIGLIP_CFGS.items())}


@pytest.mark.parametrize("name,readout,scan", [("48-8", "tokens", False), ("48-8", "map", True),
                                               ("40-10", "map", False),
                                               ("40-10", "tokens", True),
                                               ("30-7", "tokens", False)])
def test_parity(dirs, name, readout, scan):
  kw = SIGLIP_CFGS[name]
  r = hf.check_hf(dirs[name], "vision", seed=1, batch=3, scan_layers=scan,
                  options={"readout": readout})
  assert r["ok"] and r["rel"] <= RTOL and r["max_ref"] > 0.1, r
  tokens = (kw["image_size"] // kw["patch_size"]) ** 2  # no class token
  if name == "30-7":
    assert hf.load_hf(dirs[name], "vision").section.image_size == 28
  assert r["shape"] == [3, tokens if readout == "tokens" else 1, kw["hidden_size"]]


def test_section_and_params(dirs):
  """The section is SigLIP's shape; the head's weights are skipped with the
  tokens readout and imported with "map"; scanned stacks the layers."""
  tok = hf.load_hf(dirs["48-8"], "vision")
  s = tok.section
  assert (s.class_token, s.pre_norm, s.final_norm, s.patch_bias) == (False, False, True, True)
  assert (s.activation, s.ln_eps, s.readout, s.image_size, s.patch_size) == (
      "gelu_tanh", 1e-6, "tokens", 48, 8)
  assert batch_lib.slot_length(s) == 36
  assert sorted(tok.skipped) == sorted(k for k in _weight_names(dirs["48-8"])
                                       if k.startswith("head."))
  assert "map_head" not in tok.tree["vit"]
  pooled = hf.load_hf(dirs["40-10"], "vision", scan_layers=True, options={"readout": "map"})
  assert pooled.skipped == [] and pooled.section.scan_layers
  assert batch_lib.slot_length(pooled.section) == 1
  assert pooled.section.activation == "gelu" and pooled.section.ln_eps == 1e-5
  vit = pooled.tree["vit"]
  assert "layers" in vit and vit["layers"]["attn"]["query"]["kernel"].shape == (3, 48, 3, 16)
  assert vit["map_head"]["probe"].shape == (1, 48)


def _weight_names(d):
  from safetensors.numpy import load_file
  return list(load_file(os.path.join(d, "model.safetensors")))


def test_full_siglip_model_dir_imports_the_vision_tower(tmp_path):
  cfg = transformers.SiglipConfig(
      vision_config=dict(SIGLIP_CFGS["40-10"]),
      text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                       num_attention_heads=4, vocab_size=50, max_position_embeddings=16))
  d = save_hf(transformers.SiglipModel(cfg), tmp_path / "siglip", seed=2)
  imp = hf.load_hf(d, "vision", options={"readout": "map"})
  assert imp.hf_model_type == "siglip" and imp.section.emb_dim == 48
  assert {"logit_scale", "logit_bias"} <= set(imp.skipped)
  assert all(k.startswith("text_model.") or k.startswith("logit_") for k in imp.skipped)
  r = hf.check_hf(d, "vision", options={"readout": "map"})
  assert r["ok"] and r["hf_model_type"] == "siglip", r


def test_the_check_sees_a_mispacked_head(dirs, monkeypatch):
  """torch packs q, k, v in the head's in_proj_weight; reading them as k, q, v
  must fail the check (so its tolerance is not too loose to catch it)."""
  orig = hf_siglip.map_head

  def swapped(get, heads):
    out = orig(get, heads)
    out["attn"]["query"], out["attn"]["key"] = out["attn"]["key"], out["attn"]["query"]
    return out

  monkeypatch.setattr(hf_siglip, "map_head", swapped)
  r = hf.check_hf(dirs["48-8"], "vision", options={"readout": "map"})
  assert not r["ok"] and r["rel"] > 1e-2, r


def _edit_config(src, dst, **changes):
  """A copy of model dir `src` whose config.json has `changes`."""
  os.makedirs(dst)
  for f in os.listdir(src):
    with open(os.path.join(src, f), "rb") as a, open(os.path.join(dst, f), "wb") as b:
      b.write(a.read())
  with open(os.path.join(dst, "config.json")) as f:
    cfg = json.load(f)
  cfg.update(changes)
  with open(os.path.join(dst, "config.json"), "w") as f:
    json.dump(cfg, f)
  return str(dst)


@pytest.mark.parametrize("changes,options,match", [
    (dict(image_size=[48, 40]), {}, r"image_size=\[48, 40\]: only square"),
    (dict(patch_size=[8, 4]), {}, r"patch_size=\[8, 4\]: only square"),
    (dict(patch_size=64), {}, "patch_size=64: expected 1 <= patch_size <= image_size=48"),
    (dict(num_channels=1), {}, "num_channels=1"),
    (dict(hidden_act="relu6"), {}, "hidden_act='relu6'"),
    (dict(attention_dropout=0.1), {}, "attention_dropout=0.1"),
    (dict(vision_use_head=False), {"readout": "map"}, "vision_use_head=False"),
    ({}, {"readout": "cls"}, r"option readout='cls': expected one of \['tokens', 'map'\]"),
    ({}, {"pool": "map"}, r"option pool='map'.*takes \['readout'\]"),
])
def test_refusals_name_the_field(dirs, tmp_path, changes, options, match):
  d = _edit_config(dirs["48-8"], tmp_path / "edited", **changes)
  with pytest.raises(ValueError, match=match):
    hf.load_hf(d, "vision", options=options)


def test_no_head_imports_tokens(dirs, tmp_path):
  """vision_use_head=False (no head weights) still imports the tokens readout."""
  m = transformers.SiglipVisionModel(transformers.SiglipVisionConfig(
      **SIGLIP_CFGS["40-10"], vision_use_head=False))
  d = save_hf(m, tmp_path / "nohead", seed=4)
  r = hf.check_hf(d, "vision")
  assert r["ok"] and r["shape"] == [2, 16, 48], r


def test_clip_takes_no_options(tmp_path):
  from tests.hf_fixtures import CLIP_CFGS, build_hf
  d = save_hf(build_hf("CLIPVisionConfig", "CLIPVisionModel", CLIP_CFGS[0]), tmp_path / "c", 1)
  with pytest.raises(ValueError, match="option readout='map'.*'clip_vision_model' takes no"):
    hf.load_hf(d, "vision", options={"readout": "map"})


def test_cli_option(dirs, tmp_path, capsys):
  out = str(tmp_path / "vit")
  args = [f"--model_dir={dirs['40-10']}", "--component=vision", "--option", "readout=map"]
  assert cli.main(["import-hf", *args, f"--out={out}"]) == 0
  printed = capsys.readouterr().out
  assert '"readout": "map"' in printed and "encoders_vision" in printed
  params, meta = params_io.load_params(out)
  assert meta["section"]["readout"] == "map" and meta["hf_model_type"] == "siglip_vision_model"
  assert "map_head" in params["vit"] and meta["skipped_weights"] == []
  assert cli.main(["check-hf", *args]) == 0
  assert "OK" in capsys.readouterr().out
  with pytest.raises(SystemExit):
    cli.main(["check-hf", f"--model_dir={dirs['40-10']}", "--component=vision",
              "--option", "readout"])
  assert "expected FIELD=VALUE" in capsys.readouterr().err


def test_pooled_vector_docks_into_metalm(tmp_path):
  """A MetaLM with the imported SigLIP (readout "map") as its vision encoder:
  one docked position per image, holding connector(HF pooler_output), rel <= 1e-4.
  The imported tree has exactly the model's param names and shapes."""
  kw = dict(SIGLIP_CFGS["48-8"], image_size=16, patch_size=8)
  m = transformers.SiglipVisionModel(transformers.SiglipVisionConfig(**kw))
  d = save_hf(m, tmp_path / "s", seed=7)
  imp = hf.load_hf(d, "vision", options={"readout": "map"})
  cfg = small_model_cfg()
  cfg.encoders.vision = mlc.ConfigDict({**imp.section.to_dict(), "max_items": 2})
  assert batch_lib.slot_length(cfg.encoders.vision) == 1
  model, variables = build(cfg)
  params = dict(variables["params"])
  params_io.check_params(jax.tree.map(np.asarray, params["encoders_vision"]), imp.tree,
                         "imported SigLIP")
  params["encoders_vision"] = imp.tree
  batch = random_batch(model)
  emb = forward(model, {"params": params}, batch, method=metalm.MetaLM.input_embeddings)
  pixels = batch["encoders"]["vision"]["pixels"][:, 0]  # item 0 is the docked one
  with torch.no_grad():
    pooled = m.eval().float()(pixel_values=torch.from_numpy(pixels).permute(0, 3, 1, 2))
  ref = pooled.pooler_output[:, None].numpy()  # [B, 1, D]; m holds save_hf's perturbed weights
  conn = CONNECTORS.get(cfg.encoders.vision.connector.type)(
      cfg.encoders.vision.connector, cfg.decoder.emb_dim)
  want = np.asarray(conn.apply({"params": params["connectors_vision"]}, ref))[:, 0]
  rows = np.nonzero(batch["dock_mask"][0])[0]
  img_rows = rows[batch["dock_index"][0, rows] == batch_lib.dock_offsets(cfg.encoders)["vision"]]
  assert len(img_rows) == 1
  got = emb[:, img_rows[0]]
  assert np.max(np.abs(got - want)) / np.max(np.abs(want)) <= RTOL


def test_map_readout_flops_hand_count():
  """The ViT counts all T tokens whatever the readout; the pooling head one
  query (query, attention, out, MLP) over T keys and values; the connector 1
  vector per image."""
  from metalm_jax.train import metrics as metrics_lib
  cfg = presets.model_config("tiny")
  d, m, V, L = 32, 64, 100, 16
  cfg.decoder.update(vocab_size=V, num_layers=1, emb_dim=d, num_heads=2, mlp_dim=m, max_len=L)
  e, f, s, p, N = 16, 48, 16, 8, 2
  cfg.encoders = {"vision": presets.siglip(image_size=s, patch_size=p, num_layers=1, emb_dim=e,
                                           num_heads=2, mlp_dim=f, max_items=N, readout="map",
                                           connector=presets.connector("linear"))}
  cfg = mlc.ConfigDict(cfg)
  model = metalm.build_model(cfg)
  dummy = batch_lib.dummy_batch(model.cfg, 1, 8)
  abstract = nn.meta.unbox(jax.eval_shape(model.init, jax.random.key(0), dummy)["params"])
  got = metrics_lib.flops_per_example(cfg, abstract, jax.tree.map(lambda _: True, abstract), L)
  T = (s // p) ** 2
  dec = 6 * (4 * d * d + 2 * d * m + V * d) * L + 12 * L * L * d
  vit = 6 * N * ((4 * e * e + 2 * e * f + p * p * 3 * e) * T + 2 * T * T * e)
  head = 6 * N * (2 * e * e * T + (2 * e * e + 2 * e * f) * 1 + 2 * T * e)
  conn = 6 * e * d * N * 1
  assert got == pytest.approx(dec + vit + head + conn, rel=1e-12)


def test_unknown_readout_is_refused_at_model_build():
  cfg = small_model_cfg()
  cfg.encoders.vision.readout = "cls"
  with pytest.raises(ValueError, match=r"model.encoders.<vision>.readout='cls'"):
    metalm.build_model(cfg)
