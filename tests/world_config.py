"""A test helper (not a test module): a run config over the small
`test` world (80 scenes at 64 px), prepared in a given directory in ~2 s."""
from __future__ import annotations

import flax.linen as nn
import jax
import ml_collections as mlc

from metalm_jax import presets
from metalm_jax.data import prepare
from metalm_jax.evaluate import evaluators
from metalm_jax.models import metalm


def test_config(kind: str, size: str, data_dir: str, seed: int = 0, **data_overrides):
  """{model, data, seed} with config.data.world='test' in `data_dir`."""
  cfg = mlc.ConfigDict(dict(model=presets.model_config(size),
                            data=presets.data_config(kind, size), seed=seed))
  cfg.data.data_dir = str(data_dir)
  cfg.data.world = "test"
  for key, value in data_overrides.items():  # replace (update() would merge dicts)
    cfg.data[key] = value
  return cfg


def small_eval_env(data_dir: str):
  """An evaluator Env over the test world: the tiny VL model shrunk to one
  layer of width 32 (decoder and both encoders), random params (key 3)."""
  cfg = test_config("vl", "tiny", data_dir)
  small = dict(num_layers=1, emb_dim=32, num_heads=2, mlp_dim=64)
  for part in (cfg.model.decoder, cfg.model.encoders.vision, cfg.model.encoders.text):
    part.update(small)
  model = metalm.build_model(cfg.model)
  params = metalm.init_variables(model, jax.random.key(3), 1, 8)["params"]
  return evaluators.Env(cfg, model, nn.meta.unbox(params), prepare.load_tokenizer(cfg), 0)
