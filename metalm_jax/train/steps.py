"""The train step (with gradient accumulation over micro-batches); the
masked cross-entropy and the eval step it shares with the evaluators are in
models/loss.py.

Skipped steps: when the loss or the gradient norm (over trained params) is
NaN or Inf, or (with `spike=True`) the loss is above the step's `max_loss`
argument (a loss spike; the host sets the bound: train/nonfinite.py), the
step applies nothing: params, optimizer state and
`state["step"]` stay as they were and `state["skipped_nonfinite_steps"]`
grows by one. `state["step"]` therefore counts *applied* updates (like the
optimizer's own count, so the learning-rate schedule does not advance on a
skipped step), while the trainer's step (checkpoint number, metrics step,
total_steps) counts batches consumed. The trainer stops the run after
`config.max_nonfinite_steps` skipped steps in a row (train/nonfinite.py).
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax

from metalm_jax.models import loss as loss_lib
from metalm_jax.train import state as state_lib


def _micro_batches(batch, n: int):
  """[B, ...] -> [n, B/n, ...]; micro-batch i takes rows i, i+n, ... so each
  one stays spread over all batch shards."""
  def split(x):
    b = x.shape[0]
    return jnp.swapaxes(x.reshape((b // n, n) + x.shape[1:]), 0, 1)
  return jax.tree.map(split, batch)


def make_loss_fn(model, dropout: bool = True) -> Callable:
  """params, batch, rng -> (sum of weighted CE, (sum of correct, sum of weights)),
  through the full logits or in chunks of positions (`model.decoder.loss_chunk`,
  models/loss.py `model_loss_sums`)."""
  def sums(params, batch, rng):
    s, c, w = loss_lib.model_loss_sums(model, params, batch, deterministic=not dropout,
                                       rngs={"dropout": rng})
    return s, (c, w)
  return sums


def apply_gradients(tx, state, g):
  """Optimizer update of the {"step", "params", "opt_state"} state with grads g."""
  updates, opt_state = tx.update(g, state["opt_state"], state["params"])
  return {"step": state["step"] + 1, "params": optax.apply_updates(state["params"], updates),
          "opt_state": opt_state}


def make_train_step(model, tx, opt_cfg, lr_fn: Callable, seed: int, accum_steps: int = 1,
                    dropout: bool = True, spike: bool = False) -> Callable:
  """state, batch -> (state, metrics); with `spike`, state, batch, max_loss
  (a float32 scalar) -> (state, metrics). Loss is the mean CE over trained
  tokens of the whole (accumulated) batch: per-micro-batch sums, divided once.
  The dropout key depends only on (seed, step), so a resumed run repeats it."""
  grad_fn = jax.value_and_grad(make_loss_fn(model, dropout), has_aux=True)

  def step(state, batch, max_loss=None):
    params = state["params"]
    rng = jax.random.fold_in(jax.random.key(seed), state["step"])
    if accum_steps == 1:
      (s, (c, w)), g = grad_fn(params, batch, rng)
    else:
      def body(carry, xs):
        i, mb = xs
        (s_i, (c_i, w_i)), g_i = grad_fn(params, mb, jax.random.fold_in(rng, i))
        g_acc, s_acc, c_acc, w_acc = carry
        return (jax.tree.map(jnp.add, g_acc, g_i), s_acc + s_i, c_acc + c_i, w_acc + w_i), None
      zero = jax.tree.map(jnp.zeros_like, params)
      init = (zero, jnp.zeros(()), jnp.zeros(()), jnp.zeros(()))
      (g, s, c, w), _ = jax.lax.scan(
          body, init, (jnp.arange(accum_steps), _micro_batches(batch, accum_steps)))
    denom = jnp.maximum(w, 1.0)
    g = jax.tree.map(lambda x: x / denom, g)
    trainable = state_lib.trainable_mask(g, opt_cfg)
    grad_norm = optax.tree.norm(jax.tree.map(state_lib.mask_frozen, g, trainable))
    loss = s / denom
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    spiked = finite & (loss > max_loss) if max_loss is not None else jnp.zeros((), bool)
    ok = finite & ~spiked
    # A skipped step keeps step, params and moments. lax.cond, not a select
    # per leaf (where(ok, applied, kept)): with the select, XLA:CPU fused each
    # moment's update into both the param's and the moment's output fusions
    # and, as the moment's fusion writes the donated buffer in place, copied
    # every Adam moment first (284 copies, ~30 MB, ~5% of the CPU bench step;
    # TPU / GPU compiles had no such copies); tests/test_train_nonfinite.py.
    # (The clip inside recomputes the grad norm: XLA does not share it across
    # the cond. Passing grad_norm in measured no faster: ab_step, 0.995x.)
    kept = {k: state[k] for k in ("step", "params", "opt_state")}
    new_state = jax.lax.cond(ok, lambda s: apply_gradients(tx, s, g), lambda s: s, kept)
    skipped = state_lib.SKIPPED_KEY
    new_state[skipped] = state[skipped] + (~ok).astype(state[skipped].dtype)
    for k in state:  # any other entries pass through unchanged
      new_state.setdefault(k, state[k])
    metrics = {"loss": loss, "accuracy": c / denom, "grad_norm": grad_norm,
               "learning_rate": lr_fn(state["step"]), "trained_tokens": w,
               "nonfinite": (~finite).astype(jnp.int32), skipped: new_state[skipped]}
    if spike:
      metrics["spike"] = spiked.astype(jnp.int32)
    return new_state, metrics

  if spike:
    return step
  return lambda state, batch: step(state, batch)
