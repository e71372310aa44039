"""Export for serving: params-only safetensors + config (with the
normalisation constants), the jax.export function (symbolic batch) and export
from an Orbax workdir. The Predictor is tested in test_predictor.py.

Tolerances: the reloaded function vs the in-process model, rel 1e-5
(max|diff| / max|ref|, float32, same ops); reloaded params bit-equal.
"""
import json
import os

import jax
import numpy as np
import pytest

from metalm_jax import params_io
from metalm_jax.convert import export, serving
from metalm_jax.evaluate import prompts
from tests import export_fixtures as F

SEQ_LEN = F.SEQ_LEN


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  return F.exported(tmp_path_factory)


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
  assert meta["preprocess"]["image_mean"] == list(F.MEAN)
  assert meta["preprocess"]["image_std"] == list(F.STD)
  fn = serving.load_serving(os.path.join(setup["out"], export.SERVING_FILE))
  assert set(fn.platforms) == {"cpu", "cuda", "tpu"}
  assert str(fn.in_avals[-1].shape[0]) == "b"  # symbolic batch size
  assert os.path.exists(os.path.join(setup["out"], "hf_gpt2", "model.safetensors"))


@pytest.mark.parametrize("n", [1, 3])
def test_serialised_function_matches_model(setup, n):
  from metalm_jax.data.hf_tokenizer import HfTokenizer
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


def test_export_from_workdir(setup, capsys, tmp_path):
  with pytest.raises(FileNotFoundError, match="checkpoints"):
    export.restore_checkpoint_params(str(tmp_path))
  workdir = F.write_workdir(setup, str(setup["tmp"] / "run"))
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
  assert meta["preprocess"]["image_mean"] == list(F.MEAN)  # from the run config


def test_wrong_params_are_named(setup, tmp_path):
  bad = jax.tree.map(lambda x: x, setup["params"])
  bad["decoder"]["pos_embedding"] = np.zeros((3, 32), np.float32)
  with pytest.raises(ValueError, match="decoder/pos_embedding"):
    export.export_model(setup["cfg"], bad, str(tmp_path / "x"))
