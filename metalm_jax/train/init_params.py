"""Params of a fresh run from elsewhere: `init_from` (a params dir, or the
latest checkpoint of a workdir / checkpoints dir: params only) and then
`init_components` (subtrees, each from a params dir: a top-level name such as
'decoder', or a '/' path such as 'encoders_video/video/vit'). Names,
shapes and dtypes must match the model's; no NaN/Inf. Params without LoRA
adapters (a base: HF import, a run without LoRA) load into a model with
them: the adapters keep their fresh init (B = 0, so the model starts as the
base; models/lora.py)."""
from __future__ import annotations

import logging
from typing import Mapping

import jax
import numpy as np

from metalm_jax import params_io
from metalm_jax import storage
from metalm_jax.models import lora as lora_lib
from metalm_jax.train import checkpoint as ckpt_lib


def check_same_tree(field: str, want, got):
  """Names, shapes and dtypes of loaded params must match the model's; no NaN/Inf."""
  params_io.check_params(want, got, f"config.{field}", dtypes=True)


def _with_fresh_adapters(field: str, loaded, fresh):
  """`loaded` plus `fresh`'s LoRA adapters when it has none (logged)."""
  out, n = lora_lib.fill_missing(loaded, fresh)
  if n:
    logging.info("config.%s holds no LoRA adapters: %d adapter params keep their fresh init",
                 field, n)
  return out


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
      loaded = _with_fresh_adapters("init_from", loaded, params)
      check_same_tree("init_from", params, loaded)
      params = _put(loaded, shardings["params"])
    else:
      target = ckpt_lib.with_shardings(params, shardings["params"])
      params = _with_fresh_adapters("init_from", ckpt_lib.restore_params(path, target), params)
    logging.info("params initialised from %s", path)
  for name, path in sorted((config.init_components or {}).items()):
    keys = name.split("/")
    want, shard = _subtree(params, keys, name), _subtree(shardings["params"], keys, name)
    loaded, _ = params_io.load_params(path, like=want)
    loaded = _with_fresh_adapters(f"init_components.{name}", loaded, want)
    check_same_tree(f"init_components.{name}", want, loaded)
    params = _replace(params, keys, _put(loaded, shard))
    logging.info("params[%r] initialised from %s", name, path)
  return {**state, "params": params}


def _subtree(tree, keys, name):
  for i, k in enumerate(keys):
    if not isinstance(tree, Mapping) or k not in tree:
      where = "/".join(keys[:i]) or "the top level"
      known = sorted(tree) if isinstance(tree, Mapping) else []
      raise ValueError(f"config.init_components.{name}: no param subtree {k!r} at {where}; "
                       f"known: {known}")
    tree = tree[k]
  return tree


def _replace(tree, keys, value):
  """A copy of `tree` with the subtree at `keys` replaced (the rest shared)."""
  if not keys:
    return value
  return {**tree, keys[0]: _replace(tree[keys[0]], keys[1:], value)}
