"""Params of a fresh run from elsewhere: `init_from` (a params dir, or the
latest checkpoint of a workdir / checkpoints dir: params only) and then
`init_components` (top-level subtrees, each from a params dir). Names,
shapes and dtypes must match the model's; no NaN/Inf."""
from __future__ import annotations

import logging

import jax
import numpy as np

from metalm_jax import params_io
from metalm_jax import storage
from metalm_jax.train import checkpoint as ckpt_lib


def check_same_tree(field: str, want, got):
  """Names, shapes and dtypes of loaded params must match the model's; no NaN/Inf."""
  params_io.check_params(want, got, f"config.{field}", dtypes=True)


def _put(tree, shardings):
  return jax.tree.map(lambda x, s: jax.device_put(np.asarray(x), s), tree, shardings)


def load_init(config, state, shardings):
  """Applies init_from (whole params) then init_components (subtrees) to a
  fresh state; returns the state with its params replaced, sharded."""
  params = state["params"]
  if config.init_from:
    path = config.init_from
    if storage.exists(storage.join(path, params_io.PARAMS_FILE)):
      loaded, _ = params_io.load_params(path, like=params)
      check_same_tree("init_from", params, loaded)
      params = _put(loaded, shardings["params"])
    else:
      target = ckpt_lib.with_shardings(params, shardings["params"])
      params = ckpt_lib.restore_params(path, target)
    logging.info("params initialised from %s", path)
  for name, path in sorted((config.init_components or {}).items()):
    if name not in params:
      raise ValueError(f"config.init_components.{name}: no such top-level param collection; "
                       f"known: {sorted(params)}")
    loaded, _ = params_io.load_params(path, like=params[name])
    check_same_tree(f"init_components.{name}", params[name], loaded)
    params = {**params, name: _put(loaded, shardings["params"][name])}
    logging.info("params[%r] initialised from %s", name, path)
  return {**state, "params": params}
