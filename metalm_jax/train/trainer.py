"""The one training loop (pretraining and finetuning).

    state = restore(workdir) or init (+ init_from / init_components)
    for step: batch -> global arrays -> jitted step (state donated) -> metrics
              every log_every: jsonl / TensorBoard / console
              every eval_every: eval loss on the validation split
              every evals[*].every_steps: evaluators (metalm_jax.evaluate)
              every checkpoint.every_steps: async save (state + data iterator)
    SIGTERM: save the current step, wait for it, return.
"""
from __future__ import annotations

import json
import logging
import math
import os
import signal
from typing import Dict, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from orbax.checkpoint import multihost as ocp_multihost

from metalm_jax import batch as batch_lib
from metalm_jax import params_io
from metalm_jax.models import metalm
from metalm_jax.train import checkpoint as ckpt_lib
from metalm_jax.train import input as input_lib
from metalm_jax.train import metrics as metrics_lib
from metalm_jax.train import sharding as shard_lib
from metalm_jax.train import state as state_lib
from metalm_jax.train import steps as steps_lib

RESULTS_FILE = "final_metrics.json"
RUN_CONFIG_FILE = "config.json"


def _need(cond, field, value, why):
  if not cond:
    raise ValueError(f"config.{field}={value!r}: {why}")


def check_config(config, num_devices: Optional[int] = None,
                 process_count: Optional[int] = None) -> Dict[str, int]:
  """Semantic checks before anything compiles; errors name the field.
  Returns the mesh sizes."""
  num_devices = jax.device_count() if num_devices is None else num_devices
  process_count = jax.process_count() if process_count is None else process_count
  for f in ("model", "data", "batch_size", "total_steps", "optimizer", "mesh", "checkpoint",
            "logical_rules"):
    _need(f in config, f, None, "missing")
  metalm.check_model_config(config.model)
  _need(config.batch_size > 0, "batch_size", config.batch_size, "must be > 0")
  _need(config.total_steps >= 0, "total_steps", config.total_steps, "must be >= 0")
  _need(config.total_steps > 0 or config.init_from or config.init_components,
        "total_steps", config.total_steps, "an eval-only run (0 steps) needs init_from")
  _need(config.log_every > 0, "log_every", config.log_every, "must be > 0")
  _need(config.eval_every >= 0, "eval_every", config.eval_every, "must be >= 0")
  sizes = dict(zip(shard_lib.MESH_AXES, shard_lib.mesh_shape(config.mesh, num_devices)))
  shards = sizes["data"] * sizes["fsdp"]
  _need(config.batch_size % shards == 0, "batch_size", config.batch_size,
        f"not divisible by the data shards (mesh.data * mesh.fsdp = {shards})")
  _need(config.batch_size % process_count == 0, "batch_size", config.batch_size,
        f"not divisible by the process count {process_count}")
  input_lib.num_shards(config, process_count)
  eval_bs = config.get("eval_batch_size", 0) or config.batch_size
  _need(eval_bs % input_lib.num_shards(config, process_count) == 0, "eval_batch_size", eval_bs,
        "not divisible by the data shards")
  _need(eval_bs % shards == 0, "eval_batch_size", eval_bs,
        f"not divisible by the mesh's data shards ({shards})")
  opt = config.optimizer
  acc = opt.grad_accum_steps
  _need(acc >= 1 and config.batch_size % acc == 0, "optimizer.grad_accum_steps", acc,
        f"must be >= 1 and divide batch_size={config.batch_size}")
  _need((config.batch_size // acc) % shards == 0, "optimizer.grad_accum_steps", acc,
        f"micro-batch {config.batch_size // acc} not divisible by the {shards} data shards")
  _need(opt.decay in state_lib.SCHEDULES, "optimizer.decay", opt.decay,
        f"known: {sorted(state_lib.SCHEDULES)}")
  _need(opt.lr > 0, "optimizer.lr", opt.lr, "must be > 0")
  _need(0 <= opt.end_lr_frac <= 1, "optimizer.end_lr_frac", opt.end_lr_frac, "must be in [0, 1]")
  _need(opt.warmup_steps >= 0, "optimizer.warmup_steps", opt.warmup_steps, "must be >= 0")
  state_lib._groups(opt)  # regexes compile
  shard_lib.rules_from_config(config.logical_rules)
  _need(config.checkpoint.keep >= 1, "checkpoint.keep", config.checkpoint.keep, "must be >= 1")
  for name, ev in (config.get("evals") or {}).items():
    _need(ev.get("every_steps", 0) > 0, f"evals.{name}.every_steps", ev.get("every_steps"),
          "must be > 0")
  for name, path in (config.get("init_components") or {}).items():
    _need(os.path.exists(os.path.join(path, params_io.PARAMS_FILE)),
          f"init_components.{name}", path, f"no {params_io.PARAMS_FILE} there")
  return sizes


def _default_data():
  from metalm_jax.data import pipeline
  return pipeline


class _Stop:
  """Set by SIGTERM; the loop saves and returns after the current step."""

  def __init__(self):
    self.requested = False
    self._old = None

  def __enter__(self):
    try:
      self._old = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not the main thread: no handler
      self._old = None
    return self

  def _handle(self, signum, frame):
    logging.warning("SIGTERM: saving a checkpoint after this step")
    self.requested = True

  def __exit__(self, *exc):
    if self._old is not None:
      signal.signal(signal.SIGTERM, self._old)


def _check_same_tree(field: str, want, got):
  """Names, shapes and dtypes of loaded params must match the model's."""
  spec = lambda t: {n: (tuple(np.shape(x)), str(np.dtype(x.dtype))) for n, x in
                    params_io.flatten(t).items()} if isinstance(t, dict) else {}
  w, g = spec(want), spec(got)
  if w != g:
    missing, extra = sorted(set(w) - set(g)), sorted(set(g) - set(w))
    differ = sorted(k for k in set(w) & set(g) if w[k] != g[k])
    raise ValueError(f"config.{field}: loaded params do not match the model (missing "
                     f"{missing[:3]}, unexpected {extra[:3]}, shape/dtype differs {differ[:3]})")


def _put(tree, shardings):
  return jax.tree.map(lambda x, s: jax.device_put(np.asarray(x), s), tree, shardings)


def _load_init(config, state, shardings):
  """Applies init_from (whole params) then init_components (subtrees)."""
  params = state["params"]
  if config.init_from:
    path = config.init_from
    if os.path.exists(os.path.join(path, params_io.PARAMS_FILE)):
      loaded, _ = params_io.load_params(path)
      _check_same_tree("init_from", params, loaded)
      params = _put(loaded, shardings["params"])
    else:
      target = ckpt_lib.with_shardings(params, shardings["params"])
      params = ckpt_lib.restore_params(path, target)
    logging.info("params initialised from %s", path)
  for name, path in sorted((config.init_components or {}).items()):
    if name not in params:
      raise ValueError(f"config.init_components.{name}: no such top-level param collection; "
                       f"known: {sorted(params)}")
    loaded, _ = params_io.load_params(path)
    _check_same_tree(f"init_components.{name}", params[name], loaded)
    params = {**params, name: _put(loaded, shardings["params"][name])}
    logging.info("params[%r] initialised from %s", name, path)
  return {**state, "params": params}


class Trainer:
  """Builds everything from the config; `run()` trains (or evaluates)."""

  def __init__(self, config, workdir: Optional[str], data=None, devices=None):
    """data: a module with make_iterator / split_stats (default: the Grain
    pipeline); devices: the mesh's devices (default: all; abstract topology
    devices for an ahead-of-time compile). workdir=None builds a compile-only
    trainer (state shapes, shardings, jitted steps; no writer, no `run`)."""
    self.config, self.workdir = config, workdir
    devices = list(jax.devices() if devices is None else devices)
    self.mesh_sizes = check_config(config, num_devices=len(devices))
    self._data = data
    if workdir is not None:
      os.makedirs(workdir, exist_ok=True)
    if config.get("compilation_cache_dir"):
      jax.config.update("jax_compilation_cache_dir", config.compilation_cache_dir)
    self.mesh = shard_lib.make_mesh(config.mesh, devices)
    self.rules = shard_lib.rules_from_config(config.logical_rules)
    self.model = metalm.build_model(config.model)
    self.total = config.total_steps
    self.lr_fn = state_lib.lr_schedule(config.optimizer, max(self.total, 1))
    self.tx = state_lib.make_optimizer(config.optimizer, max(self.total, 1))
    self.is_main = jax.process_index() == 0
    self.writer = metrics_lib.Writer(workdir, enabled=self.is_main) if workdir is not None else None
    self._build_state_fns()

  # ---- state -------------------------------------------------------------
  def _init_params(self, rng):
    dummy = jax.tree.map(jnp.asarray, batch_lib.dummy_batch(self.model.cfg, 1, 8))
    return self.model.init(rng, dummy)["params"]

  def _build_state_fns(self):
    rng = jax.random.key(self.config.seed)
    init_state = lambda r: state_lib.init_state(state_lib.unbox(self._init_params(r)), self.tx)
    boxed = jax.eval_shape(self._init_params, rng)
    self.abstract_state = jax.eval_shape(init_state, rng)
    self.shardings = shard_lib.state_shardings(self.abstract_state, boxed, self.mesh, self.rules)
    shard_lib.check_large_params_sharded(
        self.abstract_state["params"], self.shardings["params"], self.mesh,
        self.config.sharding.min_fsdp_size)
    self.trainable = state_lib.trainable_mask(self.abstract_state["params"], self.config.optimizer)
    self._init_jit = jax.jit(init_state, out_shardings=self.shardings,
                             compiler_options=metalm.FAST_COMPILE)
    self._rng = rng

  @property
  def data(self):
    """The input module (make_iterator / split_stats); the Grain pipeline by default."""
    if self._data is None:
      self._data = _default_data()
    return self._data

  def initial_state(self):
    """A fresh state, materialised already sharded (no init_from applied)."""
    return self._init_jit(self._rng)

  def jit_train_step(self):
    """The jitted train step: (state, global batch) -> (state, metrics); state donated."""
    cfg = self.config
    step_fn = steps_lib.make_train_step(
        self.model, self.tx, cfg.optimizer, self.lr_fn, cfg.seed,
        accum_steps=cfg.optimizer.grad_accum_steps)
    with self.mesh_context():
      return jax.jit(step_fn, in_shardings=(self.shardings, shard_lib.batch_sharding(self.mesh)),
                     out_shardings=(self.shardings, shard_lib.replicated(self.mesh)),
                     donate_argnums=0)

  def _make_iter(self, split: str, batch_size: int, shuffle: bool, num_epochs):
    return input_lib.make_process_iterator(
        self.data, self.config, split, global_batch_size=batch_size, seed=self.config.seed,
        shuffle=shuffle, num_epochs=num_epochs)

  def _split(self, batch):
    if "stats" in batch:
      return self.data.split_stats(batch)
    return batch, {}

  def _compile_in_step(self, jitted, name: str, *args):
    """Compiles ahead of the first call and, with several processes, waits for
    all of them: a first collective must not wait out another process's
    compilation (Gloo's context set-up times out after 30 s)."""
    with self.mesh_context():
      compiled = jitted.lower(*args).compile()
    if jax.process_count() > 1:
      sync = ocp_multihost.get_barrier_sync_fn()
      sync(key=f"metalm_compiled_{name}", timeout_ms=3_600_000)
    return compiled

  def mesh_context(self):
    """Mesh + logical-axis rules: wrap tracing and calls of jitted model code."""
    return _MeshRules(self.mesh, self.rules)

  # ---- the run -----------------------------------------------------------
  def write_run_config(self) -> str:
    """WORKDIR/config.json: the run config, read by export and evaluation.
    An empty data.tokenizer is replaced by the embedded tokenizer's path once
    the pipeline has prepared it."""
    cfg = json.loads(self.config.to_json_best_effort())
    data = cfg.get("data") or {}
    if not data.get("tokenizer") and "world" in data:
      from metalm_jax.data import prepare
      path = prepare.tokenizer_path(self.config.data, self.config.model.decoder.vocab_size)
      if os.path.exists(path):
        data["tokenizer"] = path
    out = os.path.join(self.workdir, RUN_CONFIG_FILE)
    if self.is_main:
      with open(out + ".tmp", "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
      os.replace(out + ".tmp", out)
    return out

  def run(self) -> Dict[str, float]:
    if self.workdir is None:
      raise ValueError("Trainer(workdir=None) is compile-only; give a workdir to run")
    cfg = self.config
    train_iter = self._make_iter("train", cfg.batch_size, True, None) if self.total else None
    self.write_run_config()
    ckpt = ckpt_lib.Checkpointer(self.workdir, cfg.checkpoint)
    start = 0
    if self.total and ckpt.latest_step() is not None:
      target = ckpt_lib.with_shardings(self.abstract_state, self.shardings)
      state, start = ckpt.restore(target, train_iter)
      logging.info("resumed from %s at step %d", ckpt.directory, start)
      if self.is_main:
        print(f"resumed from {ckpt.directory} at step {start}", flush=True)
      self.writer.rewind(start)
    else:
      state = _load_init(cfg, self.initial_state(), self.shardings)
    if start == 0 and self.is_main:
      text = metrics_lib.log_parameter_overview(state_lib.unbox(self.abstract_state["params"]),
                                                self.trainable)
      self.writer.write_text("parameters", "```\n" + text + "\n```")
    with self.mesh_context():
      eval_fn = jax.jit(steps_lib.make_eval_step(self.model),
                        in_shardings=(self.shardings["params"], shard_lib.batch_sharding(self.mesh)),
                        out_shardings=shard_lib.replicated(self.mesh))
    self._eval_fn = eval_fn
    if not self.total:
      results = self._evaluate(state["params"], 0, True, bool(cfg.evals))
      ckpt.close()
      return self._finish(results)
    if start >= self.total:
      logging.info("workdir already holds the final step %d; nothing to train", start)
      prev = os.path.join(self.workdir, RESULTS_FILE)
      if os.path.exists(prev):
        ckpt.close()
        self.writer.close()
        with open(prev) as f:
          return json.load(f)
    results = self._train(state, start, train_iter, ckpt)
    return self._finish(results)

  def _finish(self, results):
    if self.is_main:
      with open(os.path.join(self.workdir, RESULTS_FILE), "w") as f:
        json.dump(results, f, indent=2, sort_keys=True)
      png = metrics_lib.plot_losses(self.workdir)
      if png:
        results = {**results, "loss_png": png}
    self.writer.close()
    return results

  def _train(self, state, start, train_iter, ckpt):
    cfg = self.config
    train_step = self.jit_train_step()
    peak = cfg.metrics.peak_flops or metrics_lib.peak_flops(metrics_lib.measure_matmul_peak())
    progress = metrics_lib.Progress(self.total, start)
    acc, skipped, flops_ex, seq_len, last = None, {}, None, None, {}
    step = start
    with _Stop() as stop:
      while step < self.total:
        local, counts = self._split(next(train_iter))
        for k, v in counts.items():
          skipped[k] = skipped.get(k, 0) + int(v)
        if flops_ex is None:
          batch_lib.validate_batch(local, cfg.model, cfg.model.decoder.vocab_size)
          seq_len = int(np.shape(local["tokens"])[1])
          flops_ex = metrics_lib.flops_per_example(cfg.model, self.abstract_state["params"],
                                                   self.trainable, seq_len)
        batch = shard_lib.global_batch(local, self.mesh)
        if step == start:
          train_step = self._compile_in_step(train_step, "train_step", state, batch)
        with self.mesh_context():
          state, m = train_step(state, batch)
        m = jax.device_get(m)  # blocks every step (CPU collectives need it too)
        if not math.isfinite(float(m["loss"])):
          raise FloatingPointError(f"loss is {m['loss']} at step {step + 1}")
        step += 1
        one = metrics_lib.TrainMetrics.single_from_model_output(
            **{k: jnp.asarray(v) for k, v in m.items() if k != "trained_tokens"})
        acc = one if acc is None else acc.merge(one)
        if step % cfg.log_every == 0 or step == self.total or stop.requested:
          last = {k: float(v) for k, v in acc.compute().items()}
          acc = None
          rates = progress.rates(step)
          sps = rates["steps_per_sec"]
          last.update(steps_per_sec=sps,
                      tokens_per_sec=sps * cfg.batch_size * seq_len,
                      mfu=sps * cfg.batch_size * flops_ex / peak)
          last.update({f"data/{k}": float(v) for k, v in skipped.items()})
          self.writer.write(step, last)
          if self.is_main:
            logging.info(progress.line(step, last))
            print(progress.line(step, last), flush=True)
        if jax.process_count() > 1:  # every process stops at the same step
          stop.requested = bool(multihost_utils.process_allgather(
              np.int32(stop.requested)).max())
        # Save before evaluating: a failing evaluator never loses trained steps.
        if ckpt.should_save(step) or step == self.total or stop.requested:
          ckpt.save(step, state, train_iter, force=True)
        if stop.requested:
          break
        due_loss = cfg.eval_every and (step % cfg.eval_every == 0 or step == self.total)
        ev = self._evaluate(state["params"], step, due_loss, self._evals_due(step))
        last.update(ev)
        if ev:
          progress.rates(step)  # eval time does not count as training time
    ckpt.close()
    return {"step": step, **last, "stopped_by_signal": float(stop.requested),
            "flops_per_example": flops_ex or 0.0, "peak_flops": peak}

  # ---- evaluation ----------------------------------------------------------
  def _evals_due(self, step: int) -> bool:
    return any(step % ev.every_steps == 0 for ev in (self.config.evals or {}).values())

  def eval_loss(self, params) -> Dict[str, float]:
    """Token-weighted CE and accuracy over `eval_batches` validation batches."""
    cfg = self.config
    bs = cfg.eval_batch_size or cfg.batch_size
    it = self._make_iter("validation", bs, False, 1)
    tot = {"loss_sum": 0.0, "correct_sum": 0.0, "weight": 0.0}
    for _ in range(cfg.eval_batches):
      try:
        local, _ = self._split(next(it))
      except StopIteration:
        break
      batch = shard_lib.global_batch(local, self.mesh)
      if hasattr(self._eval_fn, "lower"):  # still the jitted function: compile once
        self._eval_fn = self._compile_in_step(self._eval_fn, "eval_step", params, batch)
      with self.mesh_context():
        out = jax.device_get(self._eval_fn(params, batch))
      for k in tot:
        tot[k] += float(out[k])
    w = max(tot["weight"], 1.0)
    return {"eval_loss": tot["loss_sum"] / w, "eval_accuracy": tot["correct_sum"] / w,
            "eval_tokens": tot["weight"]}

  def _evaluate(self, params, step: int, loss: bool, evals: bool) -> Dict[str, float]:
    out = self.eval_loss(params) if loss else {}
    if evals:
      out.update(self._run_evals(params, step))
    if out:
      self.writer.write(step, out)
      if self.is_main:
        print(f"eval @ {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in sorted(out.items())),
              flush=True)
    return out

  def _run_evals(self, params, step: int) -> Dict[str, float]:
    if not self.config.evals:
      return {}
    from metalm_jax.evaluate import evaluators  # issue 6; imported only when configured
    with self.mesh_context():
      out = evaluators.run_evals(self.config, self.model, params, step, self.workdir)
    return {k: float(v) for k, v in out.items()}


class _MeshRules:
  """`jax.set_mesh(mesh)` plus flax logical-axis rules, as one context."""

  def __init__(self, mesh, rules):
    self.mesh, self.rules = mesh, rules

  def __enter__(self):
    self._m = jax.set_mesh(self.mesh)
    self._m.__enter__()
    self._r = nn.logical_axis_rules(self.rules)
    self._r.__enter__()

  def __exit__(self, *exc):
    self._r.__exit__(*exc)
    self._m.__exit__(*exc)


def train(config, workdir: str, data=None, devices=None) -> Dict[str, float]:
  """Trains (or, with total_steps=0, evaluates) and returns the final scalars."""
  return Trainer(config, workdir, data, devices).run()
