"""HF -> ours parity on random small models built offline, the checker CLI,
safe weight loading, and MetaLM assembly from CLIP + BERT + GPT-2.

Metric (the issue's float32 tolerance): rel = max|ours - ref| / max|ref| over
real (non-padding) positions, must be <= 1e-4.
"""
import json
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from metalm_jax import params_io  # noqa: E402
from metalm_jax import presets  # noqa: E402
from metalm_jax.convert import __main__ as cli  # noqa: E402
from metalm_jax.convert import hf  # noqa: E402
from tests.hf_fixtures import (BERT_CFGS, CLIP_CFGS, GPT2_CFGS, ROBERTA_CFGS, RTOL,  # noqa: E402
                               build_hf, save_hf)

CASES = ([("vision", "CLIPVisionConfig", "CLIPVisionModel", c) for c in CLIP_CFGS]
         + [("text", "BertConfig", "BertModel", c) for c in BERT_CFGS]
         + [("text", "RobertaConfig", "RobertaModel", c) for c in ROBERTA_CFGS]
         + [("decoder", "GPT2Config", "GPT2LMHeadModel", c) for c in GPT2_CFGS]
         # CLIP into the per-frame ViT of a video encoder: a static clip, no
         # temporal layers, tokens meaned over frames == CLIP on the image.
         + [("video", "CLIPVisionConfig", "CLIPVisionModel", CLIP_CFGS[1])])


@pytest.mark.parametrize("component,cfg_cls,model_cls,kw", CASES,
                         ids=[f"{c[2]}-{i}" for i, c in enumerate(CASES)])
def test_parity(tmp_path, component, cfg_cls, model_cls, kw):
  d = save_hf(build_hf(cfg_cls, model_cls, kw), tmp_path / "hf", seed=len(str(kw)))
  r = hf.check_hf(d, component, seed=1, batch=3)
  assert r["ok"], r
  assert r["rel"] <= RTOL and r["max_ref"] > 0.1  # non-trivial outputs
  assert r["shape"][0] == 3


def test_roberta_positions_are_offset(tmp_path):
  kw = ROBERTA_CFGS[1]
  d = save_hf(build_hf("RobertaConfig", "RobertaModel", kw), tmp_path / "hf", seed=3)
  imp = hf.load_hf(d, "text")
  off = kw["pad_token_id"] + 1
  assert imp.section.max_positions == kw["max_position_embeddings"] - off
  hf_pos = transformers.RobertaModel.from_pretrained(d).embeddings.position_embeddings.weight
  np.testing.assert_array_equal(imp.tree["bert"]["position_embeddings"],
                                hf_pos.detach().numpy()[off:])


def test_check_hf_cli_flags_a_wrong_weight(tmp_path, capsys):
  from safetensors.numpy import load_file, save_file
  d = save_hf(build_hf("GPT2Config", "GPT2LMHeadModel", GPT2_CFGS[0]), tmp_path / "hf", seed=0)
  assert cli.main(["check-hf", f"--model_dir={d}", "--component=decoder"]) == 0
  out = capsys.readouterr().out
  assert "max_abs_diff=" in out and "max_rel_diff=" in out and "OK" in out
  # Corrupt our side only: the checker must see the difference and fail.
  path = os.path.join(d, "model.safetensors")
  w = load_file(path)
  w["transformer.h.0.mlp.c_fc.bias"] = w["transformer.h.0.mlp.c_fc.bias"] + 0.05
  save_file(w, path, metadata={"format": "pt"})
  orig = hf.hf_gpt2.Gpt2.run_hf
  ref_dir = save_hf(build_hf("GPT2Config", "GPT2LMHeadModel", GPT2_CFGS[0]), tmp_path / "ref",
                    seed=0)
  try:  # HF reference reads the uncorrupted copy
    hf.hf_gpt2.Gpt2.run_hf = staticmethod(lambda _d, inputs: orig(ref_dir, inputs))
    assert cli.main(["check-hf", f"--model_dir={d}", "--component=decoder"]) == 1
  finally:
    hf.hf_gpt2.Gpt2.run_hf = staticmethod(orig)
  assert "FAIL" in capsys.readouterr().out


def test_torch_bin_is_read_with_weights_only(tmp_path):
  model = build_hf("BertConfig", "BertModel", BERT_CFGS[0])
  d = save_hf(model, tmp_path / "st", seed=5)
  binary = tmp_path / "bin"
  binary.mkdir()
  torch.save(model.state_dict(), binary / "pytorch_model.bin")
  with open(os.path.join(d, "config.json")) as f, open(binary / "config.json", "w") as g:
    g.write(f.read())
  a, b = hf.load_hf(d, "text").tree, hf.load_hf(str(binary), "text").tree
  fa, fb = params_io.flatten(a), params_io.flatten(b)
  assert fa.keys() == fb.keys()
  for k in fa:
    np.testing.assert_array_equal(fa[k], fb[k])
  # A pickle carrying an arbitrary object is refused, never executed.
  torch.save({"x": torch.zeros(1), "evil": _Evil()}, binary / "pytorch_model.bin")
  with pytest.raises(Exception, match="(?i)weights_only|unpickl|global"):
    hf.hf_io.read_weights(str(binary))


class _Evil:
  def __reduce__(self):
    return (os.system, ("echo pwned",))


def test_full_clip_dir_imports_vision_tower(tmp_path):
  cfg = transformers.CLIPConfig(
      vision_config=dict(CLIP_CFGS[0]),
      text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                       num_attention_heads=4, vocab_size=50, max_position_embeddings=16),
      projection_dim=16)
  d = save_hf(transformers.CLIPModel(cfg), tmp_path / "clip", seed=2)
  imp = hf.load_hf(d, "vision")
  assert imp.section.emb_dim == 32 and imp.section.image_size == 32
  assert any(k.startswith("text_model.") for k in imp.skipped)
  assert not any(k.startswith("vision_model.encoder") for k in imp.skipped)
  r = hf.check_hf(d, "vision")
  assert r["ok"], r


def test_component_mismatch_is_named(tmp_path):
  d = save_hf(build_hf("GPT2Config", "GPT2LMHeadModel", GPT2_CFGS[0]), tmp_path / "hf", seed=0)
  with pytest.raises(ValueError, match="component='text'.*gpt2"):
    hf.load_hf(d, "text")
  cfg = json.load(open(os.path.join(d, "config.json")))
  cfg["scale_attn_by_inverse_layer_idx"] = True
  json.dump(cfg, open(os.path.join(d, "config.json"), "w"))
  with pytest.raises(ValueError, match="scale_attn_by_inverse_layer_idx"):
    hf.load_hf(d, "decoder")


def test_assemble_metalm_from_clip_bert_gpt2(tmp_path, capsys):
  """import-hf for each component; the sections build a MetaLM whose param
  tree takes the imported params, and with nothing docked it is GPT-2."""
  import jax
  import flax.linen as nn
  import ml_collections
  from metalm_jax.models import metalm
  dirs = {
      "vision": save_hf(build_hf("CLIPVisionConfig", "CLIPVisionModel", CLIP_CFGS[0]),
                        tmp_path / "c", 1),
      "text": save_hf(build_hf("BertConfig", "BertModel", BERT_CFGS[0]), tmp_path / "b", 2),
      "decoder": save_hf(build_hf("GPT2Config", "GPT2LMHeadModel", GPT2_CFGS[0]),
                         tmp_path / "g", 3),
  }
  outs = {}
  for comp, d in dirs.items():
    outs[comp] = str(tmp_path / f"out_{comp}")
    assert cli.main(["import-hf", f"--model_dir={d}", f"--component={comp}",
                     f"--out={outs[comp]}"]) == 0
    printed = capsys.readouterr().out
    assert '"emb_dim"' in printed
  loaded = {c: params_io.load_params(o) for c, o in outs.items()}
  assert loaded["text"][1]["params_key"] == "encoders_text"
  assert any("pooler" in k for k in loaded["text"][1]["skipped_weights"])
  cfg = ml_collections.ConfigDict(dict(
      dtype="float32", decoder=loaded["decoder"][1]["section"],
      encoders=dict(vision=loaded["vision"][1]["section"], text=loaded["text"][1]["section"])))
  model = metalm.build_model(cfg)
  abstract = nn.meta.unbox(metalm.abstract_variables(model)["params"])
  params = jax.tree.map(np.zeros_like, abstract)
  params = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), abstract)
  for comp, (tree, meta) in loaded.items():
    key = meta["params_key"]
    want = params_io.flatten(abstract[key])
    got = params_io.flatten(tree)
    assert want.keys() == got.keys(), comp
    for k in want:
      assert tuple(want[k].shape) == got[k].shape, (comp, k)
    params[key] = tree
  from metalm_jax import batch as batch_lib
  batch = batch_lib.dummy_batch(cfg, 2, 12)
  rng = np.random.default_rng(0)
  batch["tokens"] = rng.integers(0, 53, (2, 12)).astype(np.int32)
  batch["segment_ids"][:] = 1
  batch["positions"][:] = np.arange(12)
  ours = np.asarray(model.apply({"params": params}, batch))
  gpt2 = transformers.GPT2LMHeadModel.from_pretrained(dirs["decoder"]).eval()
  with torch.no_grad():
    ref = gpt2(input_ids=torch.from_numpy(batch["tokens"].astype(np.int64))).logits.numpy()
  assert np.abs(ours - ref).max() / np.abs(ref).max() <= RTOL


def test_import_decoder_keeps_its_tokenizer(tmp_path):
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
  from metalm_jax.data.hf_tokenizer import HfTokenizer
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  tok.train_from_iterator(["a cat sits on the mat"] * 10, trainers.BpeTrainer(
      vocab_size=280, special_tokens=["<|endoftext|>"],
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
  n = tok.get_vocab_size()
  kw = dict(GPT2_CFGS[0], vocab_size=n, bos_token_id=0, eos_token_id=0)
  d = save_hf(build_hf("GPT2Config", "GPT2LMHeadModel", kw), tmp_path / "hf", seed=4)
  tok.save(os.path.join(d, "tokenizer.json"))
  out = str(tmp_path / "out")
  hf.import_hf(d, "decoder", out, add_special_tokens=False)  # added ones: test_hf_specials.py
  _, meta = params_io.load_params(out)
  assert meta["tokenizer"] == "tokenizer.json"
  t = HfTokenizer(os.path.join(out, meta["tokenizer"]))
  assert t.vocab_size == meta["section"]["vocab_size"] == n
  assert t.decode(t.encode("the cat sits")) == "the cat sits"
  # A vocabulary larger than the decoder's is refused, naming both sizes.
  small = dict(kw, vocab_size=n - 5)
  d2 = save_hf(build_hf("GPT2Config", "GPT2LMHeadModel", small), tmp_path / "hf2", seed=4)
  tok.save(os.path.join(d2, "tokenizer.json"))
  with pytest.raises(ValueError, match=f"vocab_size={n} > .*vocab_size={n - 5}"):
    hf.import_hf(d2, "decoder", str(tmp_path / "out2"))


def test_bfloat16_safetensors_are_read(tmp_path):
  from safetensors.torch import save_file
  w = {"a": torch.randn(3, 2).to(torch.bfloat16), "b": torch.arange(4, dtype=torch.int64)}
  save_file(w, str(tmp_path / "model.safetensors"))
  got = hf.hf_io.read_weights(str(tmp_path))
  np.testing.assert_array_equal(got["a"], w["a"].to(torch.float32).numpy())
  np.testing.assert_array_equal(got["b"], np.arange(4))


@pytest.mark.integration
def test_hf_dir_on_gcs_reads_like_the_local_one(tmp_path, gcs_bucket):
  """An HF model dir on gs:// (the emulator): the same tree as the local copy,
  for a single safetensors file and for a sharded index."""
  from metalm_jax import storage
  model = build_hf("BertConfig", "BertModel", BERT_CFGS[0])
  local = save_hf(model, tmp_path / "st", seed=7)
  sharded = str(tmp_path / "sharded")
  model.save_pretrained(sharded, max_shard_size="20KB")
  assert os.path.exists(os.path.join(sharded, "model.safetensors.index.json"))
  want = params_io.flatten(hf.load_hf(local, "text").tree)
  for src in (local, sharded):
    remote = f"{gcs_bucket}/{os.path.basename(src)}"
    for name in os.listdir(src):
      storage.copy(os.path.join(src, name), storage.join(remote, name))
    got = params_io.flatten(hf.load_hf(remote, "text").tree)
    assert got.keys() == want.keys()
    for k in want:
      np.testing.assert_array_equal(got[k], want[k])


def test_clip_fills_the_per_frame_vit_of_a_video_encoder(tmp_path, capsys):
  """import-hf --component=video, then init_components at the printed '/'
  path: the per-frame ViT of the model holds CLIP's weights and nothing else
  changes (temporal params keep their init). With the parity case of
  test_parity (check-hf --component=video: our video encoder with these ViT
  params equals CLIP) the model's per-frame ViT is CLIP's."""
  import jax
  import flax.linen as nn
  import ml_collections
  from metalm_jax.models import metalm
  from metalm_jax.train import init_params
  d = save_hf(build_hf("CLIPVisionConfig", "CLIPVisionModel", CLIP_CFGS[0]), tmp_path / "c", 1)
  out = str(tmp_path / "out")
  assert cli.main(["import-hf", f"--model_dir={d}", "--component=video", f"--out={out}"]) == 0
  assert "init_components = {'encoders_video/video/vit'" in capsys.readouterr().out
  tree, meta = params_io.load_params(out)
  section = ml_collections.ConfigDict(meta["section"])
  assert section.type == "video" and section.emb_dim == 32 and section.temporal_layers == 1
  cfg = ml_collections.ConfigDict(dict(
      dtype="float32", decoder=presets.decoder(vocab_size=64, num_layers=1, emb_dim=32, num_heads=2,
                                               mlp_dim=64, max_len=16),
      encoders={"video": section}))
  model = metalm.build_model(cfg)
  # Random params of the model's shapes (no init compile): only the ViT may change.
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda s: rng.standard_normal(s.shape).astype(s.dtype),
                        nn.meta.unbox(metalm.abstract_variables(model)["params"]))
  sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  shardings = {"params": jax.tree.map(lambda _: sharding, params)}
  config = ml_collections.ConfigDict(dict(init_from="", init_components={meta["params_key"]: out}))
  loaded = init_params.load_init(config, {"params": params}, shardings)["params"]
  video = loaded["encoders_video"]["video"]
  jax.tree.map(np.testing.assert_array_equal, video["vit"], tree)
  assert sorted(video) == ["temporal", "temporal_pos_embedding", "vit"]
  for k in ("temporal", "temporal_pos_embedding"):
    jax.tree.map(np.testing.assert_array_equal, video[k], params["encoders_video"]["video"][k])
  for k in ("decoder", "connectors_video"):
    jax.tree.map(np.testing.assert_array_equal, loaded[k], params[k])
  # A path that is not in the model is refused, naming the missing key.
  config.init_components = {"encoders_video/video/vitt": out}
  with pytest.raises(ValueError, match="init_components.encoders_video/video/vitt: no param "
                                       "subtree 'vitt' at encoders_video/video"):
    init_params.load_init(config, {"params": params}, shardings)
