"""A test helper (not a test module): a run config over the small
`test` world (80 scenes at 64 px), prepared in a given directory in ~2 s."""
from __future__ import annotations

import ml_collections as mlc

from metalm_jax import presets


def test_config(kind: str, size: str, data_dir: str, seed: int = 0, **data_overrides):
  """{model, data, seed} with config.data.world='test' in `data_dir`."""
  cfg = mlc.ConfigDict(dict(model=presets.model_config(size),
                            data=presets.data_config(kind, size), seed=seed))
  cfg.data.data_dir = str(data_dir)
  cfg.data.world = "test"
  for key, value in data_overrides.items():  # replace (update() would merge dicts)
    cfg.data[key] = value
  return cfg
