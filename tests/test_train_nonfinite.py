"""Non-finite steps: the jitted step skips a NaN/Inf update (params, optimizer
state and step unchanged, counted); the trainer stops after
max_nonfinite_steps in a row, naming the step, with only finite checkpoints;
a checkpoint with NaN params is never written."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests import train_standin as S
from metalm_jax.models import metalm
from metalm_jax.train import checkpoint as ckpt_lib
from metalm_jax.train import metrics as metrics_lib
from metalm_jax.train import nonfinite
from metalm_jax.train import state as st
from metalm_jax.train import steps as steps_lib
from metalm_jax.train import trainer as trainer_lib


def _poison(batch):
  """NaN pixels: the vision encoder's output, the loss and the grads become NaN."""
  b = dict(batch)
  enc = {k: dict(v) for k, v in b["encoders"].items()}
  enc["vision"]["pixels"] = np.full_like(enc["vision"]["pixels"], np.nan)
  b["encoders"] = enc
  return b


class _Poisoned:
  """A train iterator of the stand-in data with NaN pixels at given steps (1-based)."""

  def __init__(self, it, steps):
    self.it, self.steps, self.n = it, set(steps), 0

  def __iter__(self):
    return self

  def __next__(self):
    b = next(self.it)
    self.n += 1
    return _poison(b) if self.n in self.steps else b

  def get_state(self):
    return self.it.get_state()

  def set_state(self, state):
    self.it.set_state(state)


class PoisonedData:
  """A data module (make_iterator / split_stats) over the stand-in."""
  split_stats = staticmethod(S.split_stats)

  def __init__(self, steps):
    self.steps = steps

  def make_iterator(self, config, split, **kw):
    it = S.make_iterator(config, split, **kw)
    return _Poisoned(it, self.steps) if split == "train" else it


def test_step_skips_nonfinite_update():
  c = S.tiny_train_config()
  model = metalm.build_model(c.model)
  it = S.make_iterator(c, "train", batch_size=8, process_index=0, process_count=1, seed=0,
                       shuffle=False, num_epochs=1)
  batch, _ = S.split_stats(next(it))
  tx = st.make_optimizer(c.optimizer, 10)
  params = jax.jit(model.init)(jax.random.key(0), jax.tree.map(jnp.asarray, batch))["params"]
  state = st.init_state(st.unbox(params), tx)
  step = jax.jit(steps_lib.make_train_step(model, tx, c.optimizer, st.lr_schedule(c.optimizer, 10),
                                           0))
  good, mg = step(state, jax.tree.map(jnp.asarray, batch))
  assert int(mg["nonfinite"]) == 0 and int(good["step"]) == 1
  assert int(good[st.SKIPPED_KEY]) == 0
  assert not np.array_equal(good["params"]["decoder"]["embedder"]["embedding"],
                            state["params"]["decoder"]["embedder"]["embedding"])
  bad, mb = step(good, jax.tree.map(jnp.asarray, _poison(batch)))
  assert not np.isfinite(float(mb["loss"]))
  assert int(mb["nonfinite"]) == 1 and int(mb[st.SKIPPED_KEY]) == 1
  assert int(bad[st.SKIPPED_KEY]) == 1
  # Nothing applied: params, optimizer state and the update count are bit-equal.
  for k in ("step", "params", "opt_state"):
    jax.tree.map(np.testing.assert_array_equal, bad[k], good[k])


def test_skip_costs_no_copy_of_the_optimizer_state():
  """The skip is a lax.cond: the compiled CPU step (state donated) updates the
  Adam moments in place. With a per-leaf where(ok, new, old) XLA:CPU copied
  every moment first (2 per param leaf; the bench step lost ~5% to it)."""
  import re
  c = S.tiny_train_config()
  model = metalm.build_model(c.model)
  it = S.make_iterator(c, "train", batch_size=8, process_index=0, process_count=1, seed=0,
                       shuffle=False, num_epochs=1)
  batch = jax.tree.map(jnp.asarray, S.split_stats(next(it))[0])
  tx = st.make_optimizer(c.optimizer, 10)
  params = jax.jit(model.init)(jax.random.key(0), batch)["params"]
  state = st.init_state(st.unbox(params), tx)
  fn = steps_lib.make_train_step(model, tx, c.optimizer, st.lr_schedule(c.optimizer, 10), 0)
  hlo = jax.jit(fn, donate_argnums=0).lower(state, batch).compile().as_text()
  n_leaves = len(jax.tree.leaves(state["params"]))
  assert n_leaves > 20
  # A plain copy of an entry-computation parameter that is an Adam moment.
  params_of = dict(re.findall(r"%(\S+) = \S+ parameter\((\d+)\)", hlo))
  copied = re.findall(r"= f32\[[\d,]*\]\{[\d,]*\} copy\(%([^)]+)\)", hlo)
  flat = jax.tree_util.tree_flatten_with_path(state)[0]
  moment_args = {str(i) for i, (path, _) in enumerate(flat)
                 if any(getattr(k, "name", None) in ("mu", "nu") for k in path)}
  assert len(moment_args) == 2 * n_leaves
  moment_copies = [c for c in copied if params_of.get(c) in moment_args]
  assert moment_copies == []


@pytest.mark.integration
def test_trainer_skips_counts_and_stops_with_finite_checkpoints(tmp_path):
  w = str(tmp_path / "w")
  c = S.tiny_train_config(total_steps=8, eval_every=0, max_nonfinite_steps=2)
  c.checkpoint.update(every_steps=1, keep=10, async_save=False)
  # Step 3 is skipped alone (the run goes on); 5 and 6 are two in a row: stop.
  with pytest.raises(FloatingPointError,
                     match=r"^2 skipped steps in a row \(non-finite or loss spikes\), the first at "
                           r"step 5, the last at step 6 \(non-finite: loss nan") as e:
    trainer_lib.train(c, w, data=PoisonedData([3, 5, 6]))
  rows = metrics_lib.read_jsonl(os.path.join(w, metrics_lib.METRICS_FILE))
  skipped = {r["step"]: r["skipped_nonfinite_steps"] for r in rows}
  assert skipped[2] == 0 and skipped[3] == 1 and skipped[4] == 1 and skipped[5] == 2
  assert all(np.isfinite(r["loss"]) for r in rows if "loss" in r)  # skipped steps not averaged
  assert "loss" not in [r for r in rows if r["step"] == 3][0]
  # Skipped steps (3, 5) are not saved; step 4's params gave step 5's loss, so
  # the run resumes from 2 (the last step <= 5 - 2) and step 4 is moved aside.
  ckdir = os.path.join(w, "checkpoints")
  assert f"A rerun resumes from step 2 ({ckdir}/2); moved checkpoint(s) 4 to " in str(e.value)
  assert str(e.value).endswith("Rerun with a lower learning rate: the same command with "
                               "--config.optimizer.lr=0.0003")

  t = trainer_lib.Trainer(c, w, data=S)
  ck = ckpt_lib.Checkpointer(w, c.checkpoint)
  assert ck.all_steps() == [1, 2]
  target = ckpt_lib.with_shardings(t.abstract_state, t.shardings)
  saved = {s: ck.restore(target, t._make_iter("train", 8, True, None), step=s)[0]
           for s in (1, 2)}
  ck.close()
  for s in saved.values():
    for leaf in jax.tree.leaves(s["params"]):
      assert np.isfinite(np.asarray(leaf)).all()
  assert int(saved[2]["step"]) == 2 and int(saved[2][st.SKIPPED_KEY]) == 0
  # The rerun (clean data now) resumes from step 2 and finishes.
  assert trainer_lib.train(c, w, data=S)["step"] == 8


def test_checkpoint_with_nonfinite_params_is_refused(tmp_path):
  c = S.tiny_train_config()
  c.checkpoint.async_save = False
  t = trainer_lib.Trainer(c, str(tmp_path / "w"), data=S)
  state = t.initial_state()
  emb = state["params"]["decoder"]["embedder"]["embedding"]
  state["params"]["decoder"]["embedder"]["embedding"] = emb.at[0, 0].set(jnp.inf)
  ck = ckpt_lib.Checkpointer(str(tmp_path / "w"), c.checkpoint)
  it = t._make_iter("train", 8, True, None)
  with pytest.raises(FloatingPointError,
                     match=r"refusing to save step 7: non-finite values in 1 arrays "
                           r"\(params/decoder/embedder/embedding\)"):
    ck.save(7, state, it, force=True)
  assert ck.latest_step() is None
  ck.close()


class _SqrtModel:
  """logits = sqrt(w) everywhere: at w = 0 the loss is finite (uniform
  logits), its gradient is not (d sqrt / dw = inf)."""

  def __init__(self, vocab):
    self.vocab = vocab

  def apply(self, variables, batch, deterministic=True, rngs=None):
    w = variables["params"]["w"]
    shape = batch["targets"].shape + (self.vocab,)
    return jnp.broadcast_to(jnp.sqrt(w), shape)


def _tiny_step(spike=False):
  c = S.tiny_train_config()
  tx = st.make_optimizer(c.optimizer, 10)
  state = st.init_state({"w": jnp.zeros((4,), jnp.float32)}, tx)
  step = jax.jit(steps_lib.make_train_step(_SqrtModel(4), tx, c.optimizer,
                                           st.lr_schedule(c.optimizer, 10), 0, spike=spike))
  batch = {"targets": jnp.zeros((2, 3), jnp.int32), "loss_mask": jnp.ones((2, 3))}
  return state, step, batch


def test_finite_loss_with_a_nonfinite_gradient_is_skipped():
  state, step, batch = _tiny_step()
  new, m = step(state, batch)
  assert np.isfinite(float(m["loss"])) and not np.isfinite(float(m["grad_norm"]))
  assert int(m["nonfinite"]) == 1 and int(new[st.SKIPPED_KEY]) == 1
  for k in ("step", "params", "opt_state"):
    jax.tree.map(np.testing.assert_array_equal, new[k], state[k])


def test_loss_above_max_loss_is_skipped_as_a_spike():
  state, step, batch = _tiny_step(spike=True)
  state["params"]["w"] = jnp.ones((4,))  # finite loss and gradient
  same, m = step(state, batch, np.float32(0.5))  # the loss, log(4) = 1.39, is above 0.5
  assert int(m["spike"]) == 1 and int(m["nonfinite"]) == 0 and int(same[st.SKIPPED_KEY]) == 1
  jax.tree.map(np.testing.assert_array_equal, same["params"], state["params"])
  new, m = step(same, batch, np.float32(np.inf))
  assert int(m["spike"]) == 0 and int(new["step"]) == 1
  # The guard: the bound is factor x the median of the applied losses.
  g = nonfinite.Guard(3, spike_factor=10.0, window=3)
  assert g.max_loss() == np.inf
  for loss in (4.0, 2.0, 3.0, 100.0):
    g.update(1, {"loss": loss, "nonfinite": 0, "spike": 0, "grad_norm": 1.0})
  assert g.max_loss() == 30.0  # median of the last 3 (2, 3, 100)
