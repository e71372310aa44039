"""Semantic checks of a training config before anything compiles: each error
names the field and its value (`config.<field>=<value>: why`)."""
from __future__ import annotations

import math
from typing import Dict, Optional

import jax

from metalm_jax import config_names, params_io
from metalm_jax import sharding as shard_lib
from metalm_jax import storage
from metalm_jax.data import data_dir as data_dir_lib
from metalm_jax.models import metalm
from metalm_jax.train import input as input_lib
from metalm_jax.train import state as state_lib

# Evaluator count fields (metalm_jax/evaluate) and their smallest valid value.
EVAL_COUNT_MIN = {"num_examples": 0, "num_batches": 0, "num_baseline_examples": 0,
                  "demo_pool": 0, "shots": 0, "batch_size": 1, "max_new_tokens": 1,
                  "beam_size": 1, "bucket": 1}


def _need(cond, field, value, why):
  if not cond:
    raise ValueError(f"config.{field}={value!r}: {why}")


def check_config(config, num_devices: Optional[int] = None,
                 process_count: Optional[int] = None) -> Dict[str, int]:
  """Semantic checks before anything compiles; errors name the field.
  Returns the mesh sizes."""
  num_devices = jax.device_count() if num_devices is None else num_devices
  process_count = jax.process_count() if process_count is None else process_count
  old = config_names.old_fields(config)
  if old:
    raise ValueError(f"config fields were renamed: {', '.join(old)}; set the new ones "
                     "(metalm_jax/config_names.py)")
  for f in ("model", "data", "batch_size", "total_steps", "optimizer", "mesh", "checkpoint",
            "logical_rules", "log", "eval_loss"):
    _need(f in config, f, None, "missing")
  metalm.check_model_config(config.model)
  data_dir_lib.check_data_dir(config.data)
  _need(config.batch_size > 0, "batch_size", config.batch_size, "must be > 0")
  _need(config.total_steps >= 0, "total_steps", config.total_steps, "must be >= 0")
  _need(config.total_steps > 0 or config.init_from or config.init_components,
        "total_steps", config.total_steps, "an eval-only run (0 steps) needs init_from")
  _need(config.log.every_steps > 0, "log.every_steps", config.log.every_steps, "must be > 0")
  ev = config.eval_loss
  _need(ev.every_steps >= 0, "eval_loss.every_steps", ev.every_steps, "must be >= 0")
  _need(ev.num_batches >= (1 if ev.every_steps else 0), "eval_loss.num_batches",
        ev.num_batches, "must be >= 1 when eval_loss.every_steps > 0 (0 turns it off)")
  sizes = dict(zip(shard_lib.MESH_AXES, shard_lib.mesh_shape(config.mesh, num_devices)))
  shards = sizes["data"] * sizes["fsdp"]
  _need(config.batch_size % shards == 0, "batch_size", config.batch_size,
        f"not divisible by the data shards (mesh.data * mesh.fsdp = {shards})")
  _need(config.batch_size % process_count == 0, "batch_size", config.batch_size,
        f"not divisible by the process count {process_count}")
  input_lib.num_shards(config, process_count)
  eval_bs = ev.batch_size or config.batch_size
  _need(eval_bs % input_lib.num_shards(config, process_count) == 0, "eval_loss.batch_size",
        eval_bs, "not divisible by the data shards")
  _need(eval_bs % shards == 0, "eval_loss.batch_size", eval_bs,
        f"not divisible by the mesh's data shards ({shards})")
  opt = config.optimizer
  accum_steps = opt.grad_accum_steps
  _need(accum_steps >= 1 and config.batch_size % accum_steps == 0, "optimizer.grad_accum_steps",
        accum_steps, f"must be >= 1 and divide batch_size={config.batch_size}")
  micro_batch = config.batch_size // accum_steps
  _need(micro_batch % shards == 0, "optimizer.grad_accum_steps", accum_steps,
        f"micro-batch {micro_batch} not divisible by the {shards} data shards")
  _need(opt.decay in state_lib.SCHEDULES, "optimizer.decay", opt.decay,
        f"known: {sorted(state_lib.SCHEDULES)}")
  _need(math.isfinite(opt.lr) and opt.lr > 0, "optimizer.lr", opt.lr, "must be finite and > 0")
  _need(0 <= opt.end_lr_frac <= 1, "optimizer.end_lr_frac", opt.end_lr_frac, "must be in [0, 1]")
  _need(opt.warmup_steps >= 0, "optimizer.warmup_steps", opt.warmup_steps, "must be >= 0")
  state_lib._groups(state_lib.resolve_groups(opt, config.model))  # regexes compile
  shard_lib.rules_from_config(config.logical_rules)
  _need(config.checkpoint.keep >= 1, "checkpoint.keep", config.checkpoint.keep, "must be >= 1")
  _need(config.get("max_nonfinite_steps", 1) >= 1, "max_nonfinite_steps",
        config.get("max_nonfinite_steps"), "must be >= 1")
  spike = config.get("loss_spike") or {}
  factor = spike.get("factor", 0.0)
  _need(math.isfinite(factor) and (factor == 0 or factor > 1), "loss_spike.factor", factor,
        "must be 0 (off) or a finite number > 1")
  _need(spike.get("window", 1) >= 1, "loss_spike.window", spike.get("window"), "must be >= 1")
  _need(config.checkpoint.every_steps >= 0, "checkpoint.every_steps",
        config.checkpoint.every_steps, "must be >= 0 (0 = save only at the end and on SIGTERM)")
  for name, ev in (config.get("evals") or {}).items():
    _need(ev.get("every_steps", 0) > 0, f"evals.{name}.every_steps", ev.get("every_steps"),
          "must be > 0")
    for field, low in EVAL_COUNT_MIN.items():
      if field in ev:
        values = ev[field] if field == "shots" else [ev[field]]
        _need(all(int(v) >= low for v in values), f"evals.{name}.{field}", ev[field],
              f"must be >= {low}")
  for name, path in (config.get("init_components") or {}).items():
    _need(storage.exists(storage.join(path, params_io.PARAMS_FILE)),
          f"init_components.{name}", path, f"no {params_io.PARAMS_FILE} there")
  return sizes
