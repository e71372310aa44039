"""Params dirs are checked on load against the model's abstract params: one
error lists every missing, unexpected and wrong-shape tensor; NaN/Inf weights
are refused (Predictor, trainer init_from / init_components, export)."""
import re

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import pytest

from metalm_jax import params_io
from metalm_jax import presets
from metalm_jax.convert import export
from metalm_jax.convert.predictor import Predictor
from metalm_jax.models import metalm
from metalm_jax.train import init_params


def _cfg():
  return ml_collections.ConfigDict(dict(
      dtype="float32",
      decoder=presets.decoder(vocab_size=64, num_layers=1, emb_dim=32, num_heads=2, mlp_dim=64,
                              max_len=32),
      encoders=dict(vision=presets.vit(image_size=16, patch_size=8, num_layers=1, emb_dim=24,
                                       num_heads=2, mlp_dim=48))))


@pytest.fixture(scope="module")
def params():
  model = metalm.build_model(_cfg())
  return jax.tree.map(np.asarray, nn.meta.unbox(metalm.init_variables(
      model, jax.random.key(0))["params"]))


def _save(tmp_path, params):
  return params_io.save_params(str(tmp_path / "p"), params, {"model": _cfg().to_dict()})


def test_predictor_lists_every_mismatch(tmp_path, params):
  bad = jax.tree.map(lambda x: x, params)
  bad["decoder"]["pos_embedding"] = np.zeros((3, 32), np.float32)       # wrong shape
  del bad["decoder"]["final_norm"]["scale"]                              # missing
  bad["decoder"]["extra_bias"] = np.zeros((4,), np.float32)             # unexpected
  d = _save(tmp_path, bad)
  with pytest.raises(ValueError) as e:
    Predictor(d)
  msg = str(e.value)
  assert msg.startswith(f"params dir {d}: loaded params do not match the model: ")
  assert "missing ['decoder/final_norm/scale']" in msg
  assert "unexpected ['decoder/extra_bias']" in msg
  assert re.search(r"shape differs: \['decoder/pos_embedding \(3, 32\) float32 "
                   r"\(model: \(32, 32\) float32\)'\]", msg)


def test_nonfinite_weights_are_refused(tmp_path, params):
  bad = jax.tree.map(lambda x: x, params)
  emb = bad["decoder"]["embedder"]["embedding"].copy()
  emb[3, 1] = np.nan
  bad["decoder"]["embedder"]["embedding"] = emb
  d = _save(tmp_path, bad)
  with pytest.raises(ValueError, match=r"NaN/Inf values in \['decoder/embedder/embedding'\]"):
    Predictor(d)
  with pytest.raises(ValueError, match=r"^config.init_from: loaded params do not match the "
                                       r"model: NaN/Inf values in \['decoder/embedder"):
    init_params.check_same_tree("init_from", params, params_io.load_params(d)[0])
  with pytest.raises(ValueError, match=r"^export: .*NaN/Inf values"):
    export.check_params(metalm.build_model(_cfg()), bad)


def test_matching_params_pass(tmp_path, params):
  params_io.check_params(metalm.abstract_variables(metalm.build_model(_cfg()))["params"],
                         params_io.load_params(_save(tmp_path, params))[0], "x", dtypes=True)
