"""The one training loop (pretraining and finetuning).

    state = restore(workdir) or init (+ init_from / init_components)
    for step: batch -> global arrays -> jitted step (state donated) -> metrics
              every log.every_steps: jsonl / TensorBoard / console
              every eval_loss.every_steps: loss on the validation split
              every evals[*].every_steps: evaluators (metalm_jax.evaluate)
              every checkpoint.every_steps: async save (state + data iterator),
              except steps whose update was skipped (train/divergence.py)
    SIGTERM / preemption: save the current step, wait for it, raise Preempted
    (train/preemption.py: the entry point exits with PREEMPTED_EXIT_CODE); the
    handler is in place from before the lock to the end, so a SIGTERM during
    start-up (restore, data, compile) stops the run there with Preempted too.
    Any other way out (an error in a step, an evaluator or the divergence
    guard; Ctrl-C) first waits for the save in flight (Checkpointer.abandon).
The workdir may be local or gs:// (every file through metalm_jax/storage.py).

Around the loop: config checks (train/config_checks.py), init_from /
init_components (train/init_params.py), the evaluation hooks
(train/eval_hooks.py), run files and the tokenizer (run_files.py).
"""
from __future__ import annotations

import logging
from typing import Dict, List, Optional

import jax
import jax.numpy as jnp
import numpy as np
from orbax.checkpoint import multihost as ocp_multihost

from metalm_jax import batch as batch_lib
from metalm_jax import sharding as shard_lib
from metalm_jax import storage
from metalm_jax.models import metalm
from metalm_jax.train import checkpoint as ckpt_lib
from metalm_jax.train import divergence
from metalm_jax.train import eval_hooks
from metalm_jax.train import init_params
from metalm_jax.train import input as input_lib
from metalm_jax.train import loop_metrics
from metalm_jax.train import metrics as metrics_lib
from metalm_jax.train import nonfinite
from metalm_jax.train import preemption
from metalm_jax.train import profile as profile_lib
from metalm_jax.train import run_config
from metalm_jax import run_files
from metalm_jax.train import state as state_lib
from metalm_jax.train import steps as steps_lib
from metalm_jax.train import workdir_lock
from metalm_jax.train.config_checks import check_config
from metalm_jax.data import pipeline

RESULTS_FILE = run_files.RESULTS_FILE
RUN_CONFIG_FILE = run_files.RUN_CONFIG_FILE


def _default_data():
  return pipeline


class Trainer:
  """Builds everything from the config; `run()` trains (or evaluates)."""

  def __init__(self, config, workdir: Optional[str], data=None, devices=None,
               force_lock: bool = False, command: Optional[List[str]] = None):
    """data: a module with make_iterator / split_stats (default: the Grain
    pipeline); devices: the mesh's devices (default: all; abstract topology
    devices for an ahead-of-time compile); force_lock: take the workdir lock of
    another run (train/workdir_lock.py); command: the entry point's argv (named
    in the divergence message). workdir=None builds a compile-only trainer
    (state shapes, shardings, jitted steps; no writer, no `run`)."""
    self.config, self.force_lock, self.command = config, force_lock, command
    self.workdir = storage.join(workdir) if workdir is not None else None
    devices = list(jax.devices() if devices is None else devices)
    self.mesh_sizes = check_config(config, num_devices=len(devices))
    self._data = data
    self._data_counters: Dict[str, int] = {}  # data/* skip counts restored with a checkpoint
    if self.workdir is not None:
      with storage.errors(f"creating the workdir {self.workdir}"):
        storage.makedirs(self.workdir)
    if config.get("compilation_cache_dir"):
      jax.config.update("jax_compilation_cache_dir", config.compilation_cache_dir)
    self.mesh = shard_lib.make_mesh(config.mesh, devices)
    self.rules = shard_lib.rules_from_config(config.logical_rules)
    self.model = metalm.build_model(config.model)
    self.total = config.total_steps
    # optimizer.encoder_top_layers and model.decoder.lora resolved into groups
    # (train/state.py resolve_groups; logged with the params each holds)
    self.opt_cfg = state_lib.resolve_groups(config.optimizer, config.model)
    self.lr_fn = state_lib.lr_schedule(self.opt_cfg, max(self.total, 1))
    self.tx = state_lib.make_optimizer(self.opt_cfg, max(self.total, 1))
    self.is_main = jax.process_index() == 0
    self.writer = None
    if self.workdir is not None:
      with storage.errors(f"opening the metrics writer in {self.workdir}"):
        self.writer = metrics_lib.Writer(self.workdir, enabled=self.is_main)
    self._build_state_fns()

  # ---- state -------------------------------------------------------------
  def _init_params(self, rng):
    dummy = jax.tree.map(jnp.asarray, batch_lib.dummy_batch(self.model.cfg, 1, 8))
    return self.model.init(rng, dummy)["params"]

  def _build_state_fns(self):
    rng = jax.random.key(self.config.seed)
    init_state = lambda r: state_lib.init_state(state_lib.unbox(self._init_params(r)), self.tx)
    # The boxed abstract state carries every leaf's logical axes (Adam's
    # moments mirror the params' boxes); the real state is unboxed.
    boxed_state = jax.eval_shape(lambda r: state_lib.init_state(self._init_params(r), self.tx),
                                 rng)
    self.abstract_state = state_lib.unbox(boxed_state)
    self.shardings = shard_lib.state_shardings(boxed_state, self.mesh, self.rules)
    shard_lib.check_large_params_sharded(
        self.abstract_state["params"], self.shardings["params"], self.mesh,
        self.config.sharding.min_fsdp_size)
    self.trainable = state_lib.trainable_mask(self.abstract_state["params"], self.opt_cfg)
    for line in state_lib.describe_groups(self.abstract_state["params"], self.opt_cfg):
      logging.info("optimizer group %s", line)
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

  def jit_train_step(self, spike: bool = False):
    """The jitted train step: (state, global batch) -> (state, metrics); state
    donated. spike=True: (state, batch, max_loss), skipping a step whose loss
    is above max_loss (the run's step when config.loss_spike.factor > 0)."""
    cfg = self.config
    step_fn = steps_lib.make_train_step(
        self.model, self.tx, self.opt_cfg, self.lr_fn, cfg.seed,
        accum_steps=cfg.optimizer.grad_accum_steps, spike=spike)
    rep = shard_lib.replicated(self.mesh)
    ins = (self.shardings, shard_lib.batch_sharding(self.mesh)) + ((rep,) if spike else ())
    with self.mesh_context():
      return jax.jit(step_fn, in_shardings=ins, out_shardings=(self.shardings, rep),
                     donate_argnums=0)

  def _make_iter(self, split: str, batch_size: int, shuffle: bool, num_epochs):
    return input_lib.make_process_iterator(
        self.data, self.config, split, global_batch_size=batch_size, seed=self.config.seed,
        shuffle=shuffle, num_epochs=num_epochs)

  def _data_name(self) -> str:
    data = self.config.data
    names = sorted((data.get("mixture") or {}).keys())
    return "+".join(names) or data.get("world") or "config.data"

  def check_split(self, split: str, batch_size: int) -> None:
    """Reads one batch of `split` now, so that an empty or unreadable split
    stops the run before training, naming the data set and the split."""
    try:
      next(self._make_iter(split, batch_size, False, 1))
      return
    except StopIteration:
      why = f"it holds no batch of {batch_size} rows (empty, or smaller than one batch)"
    except Exception as e:  # noqa: BLE001  e.g. "Paths sequence can not be of 0 length"
      why = f"{type(e).__name__}: {e}"
    raise ValueError(f"split {split!r} of data set {self._data_name()} cannot be read: {why}")

  def _split(self, batch):
    """A pipeline batch -> (batch, data/* counts of this batch)."""
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
    return shard_lib.mesh_rules(self.mesh, self.rules)

  # ---- the run -----------------------------------------------------------
  def write_run_config(self) -> str:
    """WORKDIR/config.json: the run config, read by export and evaluation, with
    the tokenizer copied into the workdir (run_files.py)."""
    with storage.errors(f"writing the run config to {self.workdir}"):
      return run_files.write_run_config(self.config, self.workdir,
                                        run_files.run_tokenizer(self.config), write=self.is_main)

  def run(self) -> Dict[str, float]:
    """Trains (or evaluates) holding the workdir lock; SIGTERM handled from
    before the lock is taken (train/preemption.py)."""
    if self.workdir is None:
      raise ValueError("Trainer(workdir=None) is compile-only; give a workdir to run")
    with preemption.StopSignal() as stop:
      lock = workdir_lock.lock_for_run(self.workdir, self.force_lock)
      try:
        ckpt = ckpt_lib.Checkpointer(self.workdir, self.config.checkpoint)
        try:
          return self._run(ckpt, stop)
        except BaseException:
          ckpt.abandon()  # the save in flight finishes (or is discarded) before we go
          raise
      finally:
        lock.release()

  def _startup_check(self, stop, ckpt, step: int) -> None:
    """A SIGTERM during start-up stops here (every process at the same point)."""
    if stop.requested_everywhere():
      raise preemption.Preempted(step, ckpt.directory, saved=False)

  def _run(self, ckpt, stop) -> Dict[str, float]:
    cfg = self.config
    latest = ckpt.latest_step() if self.total else None
    resume = latest is not None
    self._startup_check(stop, ckpt, latest or 0)
    if resume:  # before anything compiles; config.json is kept until the restore succeeds
      changed = run_config.check_resume(
          self.workdir, run_files.run_config_json(
              self.config, run_files.run_tokenizer(self.config, must_exist=False)))
      if self.is_main:
        for line in changed:
          print(f"config changed on resume: {line}", flush=True)
      if latest > self.total:
        raise ValueError(
            f"config.total_steps={self.total} is below step {latest}, the latest checkpoint in "
            f"{ckpt.directory}: this run trained past it. Give total_steps >= {latest} to go "
            "on, or evaluate it with total_steps=0 and init_from= in another workdir")
    if cfg.eval_loss.every_steps:
      self.check_split("validation", cfg.eval_loss.batch_size or cfg.batch_size)
    train_iter = None
    if self.total:
      try:
        train_iter = self._make_iter("train", cfg.batch_size, True, None)
      except Exception as e:  # noqa: BLE001
        raise ValueError(f"split 'train' of data set {self._data_name()} cannot be read: "
                         f"{type(e).__name__}: {e}") from e
    start = 0
    if resume:
      target = ckpt_lib.with_shardings(self.abstract_state, self.shardings)
      state, start = ckpt.restore(target, train_iter)
      self._data_counters = dict(ckpt.restored_counters)  # data/* keep counting
      logging.info("resumed from %s at step %d", ckpt.directory, start)
      if self.is_main:
        print(f"resumed from {ckpt.directory} at step {start}", flush=True)
    else:
      state = init_params.load_init(cfg, self.initial_state(), self.shardings)
    self._startup_check(stop, ckpt, start)
    # Every start: metrics after the restored step (all, without one) go, so a
    # restart never logs a step twice.
    self.writer.rewind(start if start else None)
    self.write_run_config()
    if start == 0 and self.is_main:
      text = metrics_lib.log_parameter_overview(state_lib.unbox(self.abstract_state["params"]),
                                                self.trainable)
      self.writer.write_text("parameters", "```\n" + text + "\n```")
    self.evals = eval_hooks.EvalHooks(self)
    if not self.total:
      results = self.evals.evaluate(state["params"], 0, True, bool(cfg.evals))
      ckpt.close()
      return self._finish(results)
    if start >= self.total:
      logging.info("workdir already holds the final step %d; nothing to train", start)
      prev = run_files.read_results(self.workdir)
      if prev is not None:
        ckpt.close()
        self.writer.close()
        return prev
    results = self._train(state, start, train_iter, ckpt, stop)
    return self._finish(results)

  def _finish(self, results):
    if self.is_main:
      run_files.write_results(self.workdir, results)
      png = metrics_lib.plot_losses_or_warn(self.workdir)
      if png:
        results = {**results, "loss_png": png}
    self.writer.close()
    return results

  def _train(self, state, start, train_iter, ckpt, stop):
    cfg = self.config
    spike_cfg = cfg.get("loss_spike") or {}
    factor = float(spike_cfg.get("factor", 0.0))
    train_step = self.jit_train_step(spike=factor > 0)
    mfu_peak = metrics_lib.mfu_peak(cfg.metrics.peak_flops, list(self.mesh.devices.flat))
    logging.info("%s", mfu_peak.describe())
    peak = mfu_peak.total
    progress = metrics_lib.Progress(self.total, start)
    skipped, flops_ex, seq_len, last = dict(self._data_counters), None, None, {}
    guard = nonfinite.Guard(cfg.get("max_nonfinite_steps", 3), factor,
                            spike_cfg.get("window", 32))
    tracker = divergence.Tracker(ckpt, cfg.checkpoint.keep, cfg.optimizer.lr, self.command)
    guard.on_skip = tracker.skipped
    step_metrics = loop_metrics.StepMetrics.for_backend(guard)
    profiler = profile_lib.Profiler(cfg.get("profile"), self.workdir, enabled=self.is_main)
    step, stopping, saved_at_stop = start, False, False
    try:
      while step < self.total:
        try:
          local, counts = self._split(next(train_iter))
        except StopIteration:
          raise ValueError(f"split 'train' of data set {self._data_name()} ran out at step "
                           f"{step + 1} (it holds no batch of {cfg.batch_size} rows?)") from None
        for k, v in counts.items():
          skipped[k] = skipped.get(k, 0) + int(v)
        if flops_ex is None:
          batch_lib.validate_batch(local, cfg.model, cfg.model.decoder.vocab_size)
          seq_len = int(np.shape(local["tokens"])[1])
          flops_ex = metrics_lib.flops_per_example(cfg.model, self.abstract_state["params"],
                                                   self.trainable, seq_len)
        batch = shard_lib.global_batch(local, self.mesh)
        args = (state, batch) + ((np.float32(guard.max_loss()),) if factor > 0 else ())
        if step == start:
          self._startup_check(stop, ckpt, start)  # before the compile
          train_step = self._compile_in_step(train_step, "train_step", *args)
        profiler.maybe_start(step)
        with self.mesh_context():
          state, m = train_step(*args)
        step += 1
        step_metrics.add(step, m)  # stays on the device until a log step (loop_metrics.py)
        profiler.maybe_stop(step, m["loss"])
        log_due = step % cfg.log.every_steps == 0 or step == self.total
        stopping = stop.should_stop(step, sync_now=log_due)
        if log_due or stopping:
          last = step_metrics.fetch(step)
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
        # Save before evaluating: a failing evaluator never loses trained steps.
        # A skipped step is not saved (its state is the last applied one): a
        # divergence never evicts good checkpoints; the final step always is.
        if ckpt.should_save(step) or step == self.total or stopping:
          if step == self.total or not step_metrics.last_skipped():
            saved_at_stop = ckpt.save(step, state, train_iter, force=True, counters=skipped)
            if saved_at_stop:
              tracker.saved(step)
          else:
            logging.warning("step %d: its update was skipped; not saved as a checkpoint", step)
            saved_at_stop = False
        if stopping:
          break
        every = cfg.eval_loss.every_steps
        due_loss = every and (step % every == 0 or step == self.total)
        ev = self.evals.evaluate(state["params"], step, due_loss, self.evals.evals_due(step))
        last.update(ev)
        if ev:
          progress.rates(step)  # eval time does not count as training time
    except nonfinite.Diverged as e:
      raise FloatingPointError(tracker.stop(e)) from None
    profiler.maybe_stop(step, force=True)
    ckpt.close()  # waits for the last save
    if stopping:
      self.writer.close()
      raise preemption.Preempted(step, ckpt.directory, saved=saved_at_stop)
    return {"step": step, **last, "flops_per_example": flops_ex or 0.0, "peak_flops": peak}


def train(config, workdir: str, data=None, devices=None, force_lock: bool = False,
          command: Optional[List[str]] = None) -> Dict[str, float]:
  """Trains (or, with total_steps=0, evaluates) and returns the final scalars."""
  return Trainer(config, workdir, data, devices, force_lock, command).run()
