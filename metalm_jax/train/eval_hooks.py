"""The trainer's evaluation hooks: the validation loss every `eval_loss.every_steps`
steps and the configured evaluators (metalm_jax.evaluate) every
`evals[*].every_steps`; results go to the metrics writer and the console."""
from __future__ import annotations

import logging
from typing import Dict

import jax

from metalm_jax import sharding as shard_lib
from metalm_jax.models import loss as loss_lib


class EvalHooks:
  """Evaluation for one Trainer (train/trainer.py): its mesh, shardings,
  model, input iterators and writer."""

  def __init__(self, trainer):
    self.trainer = trainer
    with trainer.mesh_context():
      self._eval_fn = jax.jit(
          loss_lib.make_eval_step(trainer.model),
          in_shardings=(trainer.shardings["params"], shard_lib.batch_sharding(trainer.mesh)),
          out_shardings=shard_lib.replicated(trainer.mesh))

  def evals_due(self, step: int) -> bool:
    return any(step % ev.every_steps == 0
               for ev in (self.trainer.config.evals or {}).values())

  def eval_loss(self, params) -> Dict[str, float]:
    """Token-weighted CE and accuracy over `eval_loss.num_batches` validation batches."""
    t, cfg = self.trainer, self.trainer.config
    bs = cfg.eval_loss.batch_size or cfg.batch_size
    it = t._make_iter("validation", bs, False, 1)
    tot = {"loss_sum": 0.0, "correct_sum": 0.0, "weight": 0.0}
    for _ in range(cfg.eval_loss.num_batches):
      try:
        local, _ = t._split(next(it))
      except StopIteration:
        break
      batch = shard_lib.global_batch(local, t.mesh)
      if hasattr(self._eval_fn, "lower"):  # still the jitted function: compile once
        self._eval_fn = t._compile_in_step(self._eval_fn, "eval_step", params, batch)
      with t.mesh_context():
        out = jax.device_get(self._eval_fn(params, batch))
      for k in tot:
        tot[k] += float(out[k])
    w = tot["weight"]
    if w <= 0:  # never a perfect score from no data
      logging.warning("eval_loss: no validation tokens in %d batches of %d rows (split smaller "
                      "than one batch?): reporting NaN", cfg.eval_loss.num_batches, bs)
      return {"eval_loss": float("nan"), "eval_accuracy": float("nan"), "eval_tokens": 0.0}
    return {"eval_loss": tot["loss_sum"] / w, "eval_accuracy": tot["correct_sum"] / w,
            "eval_tokens": w}

  def evaluate(self, params, step: int, loss: bool, evals: bool) -> Dict[str, float]:
    """The due evaluations at `step`, written and printed; {} if none is due."""
    t = self.trainer
    out = self.eval_loss(params) if loss else {}
    if evals:
      out.update(self._run_evals(params, step))
    if out:
      t.writer.write(step, out)
      if t.is_main:
        print(f"eval @ {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in sorted(out.items())),
              flush=True)
    return out

  def _run_evals(self, params, step: int) -> Dict[str, float]:
    t = self.trainer
    if not t.config.evals:
      return {}
    from metalm_jax.evaluate import evaluators, placement  # imported only when configured
    where = placement.Placement(t.mesh, t.rules, t.shardings["params"])
    with t.mesh_context():
      out = evaluators.run_evals(t.config, t.model, params, step, t.workdir, placement=where)
    return {k: float(v) for k, v in out.items()}
