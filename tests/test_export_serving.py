"""Export for serving: params-only safetensors + config, the jax.export
function (symbolic batch), export from an Orbax workdir, and the Predictor.

Tolerances: the reloaded function vs the in-process model, rel 1e-5
(max|diff| / max|ref|, float32, same ops); reloaded params bit-equal.
"""
import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import pytest

from metalm_jax import params_io
from metalm_jax import presets
from metalm_jax.convert import export, serving
from metalm_jax.evaluate import prompts
from metalm_jax.models import metalm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPECIALS = ["<pad>", "<unk>", "<s>", "</s>", "<image>", "</image>"]
WORDS = ["Summarize", "this", "image", ":", "question", "answer", "what", "is", "?", "a",
         "cat", "dog", "red", "blue", "on", "the", "mat", "colour"]
SEQ_LEN = 24


def _cfg():
  return ml_collections.ConfigDict(dict(
      dtype="float32",
      decoder=presets.decoder(vocab_size=64, num_layers=2, emb_dim=32, num_heads=2, mlp_dim=64,
                              max_len=48, activation="gelu_new"),
      encoders=dict(
          vision=presets.vit(image_size=16, patch_size=8, num_layers=1, emb_dim=24, num_heads=2,
                             mlp_dim=48),
          text=presets.bert(max_items=1, max_len=4, vocab_size=64, num_layers=1, emb_dim=16,
                            num_heads=2, mlp_dim=32))))


def _tokenizer_file(path):
  from tokenizers import Tokenizer, models, pre_tokenizers
  vocab = {t: i for i, t in enumerate(SPECIALS + WORDS)}
  tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  tok.add_special_tokens(SPECIALS)
  tok.save(str(path))
  return str(path)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("export")
  cfg = _cfg()
  model = metalm.build_model(cfg)
  boxed = metalm.init_variables(model, jax.random.key(3))["params"]
  params = jax.tree.map(np.asarray, nn.meta.unbox(boxed))
  tok_path = _tokenizer_file(tmp / "tokenizer.json")
  out = str(tmp / "export")
  written = export.export_model(cfg, params, out, seq_len=SEQ_LEN, tokenizer=tok_path)
  return dict(cfg=cfg, model=model, boxed=boxed, params=params, out=out, written=written,
              tok_path=tok_path, tmp=tmp)


def _images(n, seed=0):
  return [np.random.default_rng(seed + i).standard_normal((16, 16, 3)).astype(np.float32)
          for i in range(n)]


def _prompt_batch(cfg, tok, n):
  rows = [[prompts.Image(im), prompts.Text("Summarize this image :")] for im in _images(n)]
  rows[-1] = [prompts.Text("what is a cat ?")]  # one row without an image
  return prompts.build_batch(rows, tok, cfg, seq_len=SEQ_LEN)


def test_params_and_names_reload_exactly(setup):
  params, meta = params_io.load_params(setup["out"])
  a, b = params_io.flatten(setup["params"]), params_io.flatten(params)
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  names = json.load(open(os.path.join(setup["out"], export.NAMES_FILE)))
  assert set(names) == set(a)
  assert names["decoder/layers_0/attn/query/kernel"]["shape"] == [32, 2, 16]
  assert meta["model"] == setup["cfg"].to_dict()
  assert meta["serving"]["seq_len"] == SEQ_LEN and meta["tokenizer"] == "tokenizer.json"
  fn = serving.load_serving(os.path.join(setup["out"], export.SERVING_FILE))
  assert set(fn.platforms) == {"cpu", "cuda", "tpu"}
  assert str(fn.in_avals[-1].shape[0]) == "b"  # symbolic batch size
  assert os.path.exists(os.path.join(setup["out"], "hf_gpt2", "model.safetensors"))


@pytest.mark.parametrize("n", [1, 3])
def test_serialised_function_matches_model(setup, n):
  from metalm_jax.convert.hf_tokenizer import HfTokenizer
  cfg, model = setup["cfg"], setup["model"]
  tok = HfTokenizer(setup["tok_path"])
  batch = _prompt_batch(cfg, tok, n)
  assert batch["dock_mask"][0].sum() == 5 or n == 1 and batch["dock_mask"].sum() == 0
  fn = serving.load_serving(os.path.join(setup["out"], export.SERVING_FILE))
  params, _ = params_io.load_params(setup["out"])
  got = np.asarray(fn.call(params, serving.serving_batch(batch)))
  ref = np.asarray(jax.jit(model.apply)({"params": setup["params"]}, batch))[:, -1]  # left pad
  assert got.shape == (n, 64)
  assert np.abs(got - ref).max() / np.abs(ref).max() <= 1e-5
  if n > 1:  # the docked image changes the prediction
    other = dict(batch, dock_mask=np.zeros_like(batch["dock_mask"]))
    assert np.abs(np.asarray(fn.call(params, serving.serving_batch(other))) - got).max() > 1e-4


def test_next_token_logits_right_padding(setup):
  model, cfg = setup["model"], setup["cfg"]
  from metalm_jax import batch as batch_lib
  b = batch_lib.dummy_batch(cfg, 2, SEQ_LEN)
  lengths = [7, 13]
  rng = np.random.default_rng(0)
  for i, n in enumerate(lengths):
    b["tokens"][i, :n] = rng.integers(6, 24, n)
    b["segment_ids"][i, :n] = 1
    b["positions"][i, :n] = np.arange(n)
  got = np.asarray(jax.jit(lambda p, x: serving.next_token_logits(model, p, x))(
      setup["params"], b))
  full = np.asarray(jax.jit(model.apply)({"params": setup["params"]}, b))
  for i, n in enumerate(lengths):
    np.testing.assert_allclose(got[i], full[i, n - 1], rtol=0, atol=0)


def _write_workdir(setup, workdir):
  import optax
  import orbax.checkpoint as ocp
  os.makedirs(workdir)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    json.dump({"model": setup["cfg"].to_dict(), "data": {"tokenizer": setup["tok_path"]}}, f)
  state = {"params": setup["boxed"], "step": np.int32(7),
           "opt_state": optax.adamw(1e-3).init(setup["params"])}
  mgr = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"),
                              item_names=("state", "data_iter"))
  for step in (3, 7):
    mgr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                           data_iter=ocp.args.JsonSave({"pos": step})))
  mgr.wait_until_finished()
  mgr.close()


def test_export_from_workdir(setup, capsys):
  workdir = str(setup["tmp"] / "run")
  with pytest.raises(FileNotFoundError, match="checkpoints"):
    export.restore_checkpoint_params(workdir)
  _write_workdir(setup, workdir)
  out = str(setup["tmp"] / "from_workdir")
  from metalm_jax.export import main
  assert main([f"--workdir={workdir}", f"--out={out}", f"--seq_len={SEQ_LEN}"]) == 0
  assert "step: 7" in capsys.readouterr().out
  params, meta = params_io.load_params(out)
  a, b = params_io.flatten(setup["params"]), params_io.flatten(params)
  assert a.keys() == b.keys()  # params only: no optimizer state
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  assert os.path.exists(os.path.join(out, "tokenizer.json"))


def test_wrong_params_are_named(setup, tmp_path):
  bad = jax.tree.map(lambda x: x, setup["params"])
  bad["decoder"]["pos_embedding"] = np.zeros((3, 32), np.float32)
  with pytest.raises(ValueError, match="decoder/pos_embedding"):
    export.export_model(setup["cfg"], bad, str(tmp_path / "x"))


def _greedy_full_forward(model, params, batch, n, eos):
  """Reference: greedy by full forward passes (no KV cache). The prompt is
  followed by n padding slots (segment 0, invisible to real queries) that are
  filled one by one, so one compiled shape serves every step."""
  b = {k: np.asarray(v) for k, v in batch.items() if k != "encoders"}
  rows, length = b["tokens"].shape
  grow = lambda v, fill=0: np.concatenate([v, np.full((rows, n), fill, v.dtype)], 1)
  b = {k: grow(v) for k, v in b.items()}
  apply = jax.jit(model.apply)
  out = [[] for _ in range(rows)]
  done = np.zeros(rows, bool)
  for i in range(n):
    t = length + i - 1  # last filled position
    logits = np.asarray(apply({"params": params}, dict(b, encoders=batch["encoders"])))[:, t]
    nxt = logits.argmax(-1).astype(np.int32)
    for r in range(rows):
      done[r] |= nxt[r] == eos
      if not done[r]:
        out[r].append(int(nxt[r]))
    b["tokens"][:, t + 1] = nxt
    b["segment_ids"][:, t + 1] = 1
    b["positions"][:, t + 1] = b["positions"][:, t] + 1
  return out


PREDICT_SCRIPT = """
import json, sys
import numpy as np
sys.path.insert(0, {root!r})
from metalm_jax.convert.predictor import Predictor
p = Predictor({out!r}, max_new_tokens=6)
imgs = [np.random.default_rng(i).standard_normal((16, 16, 3)).astype(np.float32) for i in range(2)]
caps = p.caption(imgs)
ans = p.vqa(imgs, ["what colour is the cat ?", "is this a dog ?"])
heavy = sorted(m for m in ("optax", "orbax", "grain", "tensorflow") if m in sys.modules)
print(json.dumps(dict(caps=caps, ans=ans, heavy=heavy)))
"""


def test_predictor_without_training_stack(setup):
  from metalm_jax.convert.hf_tokenizer import HfTokenizer
  from metalm_jax.convert.predictor import CAPTION_PROMPT, VQA_TEMPLATE
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
  res = subprocess.run([sys.executable, "-c", PREDICT_SCRIPT.format(root=ROOT, out=setup["out"])],
                       capture_output=True, text=True, env=env, timeout=300)
  assert res.returncode == 0, res.stderr[-3000:]
  got = json.loads(res.stdout.strip().splitlines()[-1])
  assert got["heavy"] == []
  tok = HfTokenizer(setup["tok_path"])
  imgs = _images(2)
  qs = ["what colour is the cat ?", "is this a dog ?"]
  for texts, key in ([[CAPTION_PROMPT] * 2, "caps"],
                     [[VQA_TEMPLATE.format(question=q) for q in qs], "ans"]):
    rows = [[prompts.Image(im), prompts.Text(t)] for im, t in zip(imgs, texts)]
    batch = prompts.build_batch(rows, tok, setup["cfg"])
    ref = _greedy_full_forward(setup["model"], setup["params"], batch, 6, tok.eos)
    assert got[key] == [tok.decode(r).strip() for r in ref], key
    assert all(len(r) > 0 for r in ref)  # something was generated to compare
