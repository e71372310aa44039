"""The trainer in-process on the stand-in data: meshes agree, a checkpoint
moves to another mesh and training continues, eval-only runs, component
loading, gradient accumulation."""
import glob
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests import train_standin as S
from metalm_jax import params_io
from metalm_jax.models import metalm
from metalm_jax.train import checkpoint as ckpt_lib
from metalm_jax.train import init_params
from metalm_jax.train import metrics as metrics_lib
from metalm_jax.train import state as st
from metalm_jax.models import loss as loss_lib
from metalm_jax.train import steps as steps_lib
from metalm_jax.train import trainer as trainer_lib

# float32 reductions run in another order on another mesh: losses agree to this.
MESH_ATOL = 2e-4


def _cfg(**kw):
  c = S.tiny_train_config(**kw)
  c.optimizer.decay = "constant"  # runs of different lengths share the schedule
  return c


def _losses(workdir, key="loss"):
  rows = metrics_lib.read_jsonl(os.path.join(workdir, metrics_lib.METRICS_FILE))
  return {r["step"]: r[key] for r in rows if key in r}


def _compare(a, b, steps):
  np.testing.assert_allclose([a[s] for s in steps], [b[s] for s in steps], atol=MESH_ATOL)


@pytest.mark.integration
def test_meshes_agree_and_checkpoint_moves_across_meshes(tmp_path):
  one = jax.devices()[:1]
  w8, w1 = str(tmp_path / "mesh222"), str(tmp_path / "single")
  c8 = _cfg(total_steps=4, eval_every=0)
  c8.checkpoint.every_steps = 2
  c8.mesh.update(data=2, fsdp=2, tensor=2)
  c8.sharding.min_fsdp_size = 1024
  r8 = trainer_lib.train(c8, w8, data=S)
  c1 = _cfg(total_steps=6, eval_every=6)
  c1.mesh.update(data=1, fsdp=1, tensor=1)
  c1.profile.update(start_step=2, num_steps=2)  # the profiler window: steps 3 and 4
  r1 = trainer_lib.train(c1, w1, data=S, devices=one)
  traces = glob.glob(os.path.join(w1, "profile", "plugins", "profile", "*", "*.xplane.pb"))
  assert len(traces) == 1 and os.path.getsize(traces[0]) > 0
  assert not os.path.exists(os.path.join(w8, "profile"))  # off by default
  l8, l1 = _losses(w8), _losses(w1)
  assert sorted(l8) == [1, 2, 3, 4] and sorted(l1) == [1, 2, 3, 4, 5, 6]
  _compare(l8, l1, [1, 2, 3, 4])
  assert l1[6] < l1[1] - 0.05, l1  # it learns
  # Outputs: checkpoints (keep=3 of every 2 steps + final), TB events, PNG, results.
  assert sorted(os.listdir(os.path.join(w8, "checkpoints"))) == ["2", "4"]
  assert glob.glob(os.path.join(w8, "tensorboard", "events.out.tfevents.*"))
  assert os.path.getsize(r8["loss_png"]) > 1000
  assert r8["data/too_long"] > 0  # pipeline counters are summed and reported
  # The (2,2,2) checkpoint at step 4 continues on one device: steps 5, 6 match.
  c8b = _cfg(total_steps=6, eval_every=6)
  c8b.mesh.update(data=1, fsdp=1, tensor=1)
  r8b = trainer_lib.train(c8b, w8, data=S, devices=one)
  l8b = _losses(w8)
  assert r8b["step"] == 6 and sorted(l8b) == [1, 2, 3, 4, 5, 6]
  # The data/* skip counters are checkpointed: the resumed run keeps counting
  # and ends where the uninterrupted run (same batches) ends.
  assert 0 < r8["data/too_long"] < r8b["data/too_long"] == r1["data/too_long"]
  _compare(l8b, l1, [5, 6])
  np.testing.assert_allclose(r8b["eval_loss"], r1["eval_loss"], atol=MESH_ATOL)

  # Eval-only run: params of the single-device run give its final eval loss again.
  ce = _cfg(total_steps=0)
  ce.mesh.update(data=1, fsdp=1, tensor=1)
  ce.init_from = w1
  re_ = trainer_lib.train(ce, str(tmp_path / "evalonly"), data=S, devices=one)
  assert re_["eval_loss"] == pytest.approx(r1["eval_loss"], rel=1e-6)

  # init_components: a params dir replaces exactly one top-level subtree.
  t = trainer_lib.Trainer(ce, str(tmp_path / "comp"), data=S, devices=one)
  target = ckpt_lib.with_shardings(t.abstract_state["params"], t.shardings["params"])
  trained = ckpt_lib.restore_params(w1, target)
  pdir = params_io.save_params(str(tmp_path / "dec"), {"decoder": trained["decoder"]}["decoder"])
  cc = _cfg(total_steps=1)
  cc.init_components = {"decoder": pdir}
  fresh = t.initial_state()
  loaded = init_params.load_init(cc, fresh, t.shardings)["params"]
  jax.tree.map(np.testing.assert_array_equal, loaded["decoder"], trained["decoder"])
  jax.tree.map(np.testing.assert_array_equal, loaded["encoders_vision"],
               t.initial_state()["params"]["encoders_vision"])
  cc.init_components = {"encoders_vision": pdir}
  with pytest.raises(ValueError, match=r"init_components.encoders_vision: loaded params do not"):
    init_params.load_init(cc, fresh, t.shardings)

  # A restart that finds no checkpoint starts over: every step logged once.
  shutil.rmtree(os.path.join(w1, "checkpoints"))
  c1.profile.num_steps = 0
  trainer_lib.train(c1, w1, data=S, devices=one)
  rows = metrics_lib.read_metrics(w1)
  assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4, 5, 6]
  assert _losses(w1) == l1


def test_gradient_accumulation_matches_one_batch():
  c = _cfg()
  model = metalm.build_model(c.model)
  it = S.make_iterator(c, "train", batch_size=8, process_index=0, process_count=1, seed=0,
                       shuffle=False, num_epochs=1)
  batch, _ = S.split_stats(next(it))
  batch = jax.tree.map(jnp.asarray, batch)
  tx = st.make_optimizer(c.optimizer, 10)
  lr = st.lr_schedule(c.optimizer, 10)
  params = jax.jit(model.init)(jax.random.key(0), batch)["params"]
  state = st.init_state(st.unbox(params), tx)
  outs = {}
  for n in (1, 2):
    step = jax.jit(steps_lib.make_train_step(model, tx, c.optimizer, lr, 0, accum_steps=n))
    outs[n] = step(state, batch)
  for n in (2,):
    for k in ("loss", "accuracy", "grad_norm"):
      np.testing.assert_allclose(outs[n][1][k], outs[1][1][k], rtol=1e-5, err_msg=f"{n} {k}")
    # Adam moments are linear / quadratic in the gradient: they carry its error.
    # Elements far below a leaf's scale are float32 summation noise: absolute
    # tolerance 1e-5 of the leaf's largest magnitude, at least 1e-9 (leaves whose
    # gradient is zero in exact arithmetic hold noise of ~1e-11). A factor-of-n
    # error in the accumulated gradient still fails by orders of magnitude.
    jax.tree.map(lambda a, b: np.testing.assert_allclose(
        a, b, rtol=1e-4, atol=max(1e-9, 1e-5 * float(np.max(np.abs(b))))),
                 outs[n][0]["opt_state"], outs[1][0]["opt_state"])
  # The loss is the token-weighted mean over the whole batch.
  logits = model.apply({"params": state["params"]}, batch)
  s, _, w = loss_lib.loss_sums(logits, batch["targets"], batch["loss_mask"])
  logp = jax.nn.log_softmax(np.asarray(logits, np.float64))
  ce = -np.take_along_axis(logp, np.asarray(batch["targets"])[..., None], -1)[..., 0]
  ref = (ce * np.asarray(batch["loss_mask"])).sum() / np.asarray(batch["loss_mask"]).sum()
  np.testing.assert_allclose(outs[1][1]["loss"], ref, rtol=1e-5)


def test_config_errors_name_the_field():
  c = _cfg()
  c.batch_size = 6
  c.mesh.update(data=4, fsdp=2, tensor=1)
  with pytest.raises(ValueError, match=r"config.batch_size=6: not divisible by the data shards"):
    trainer_lib.check_config(c, num_devices=8, process_count=1)
  c.batch_size = 8
  c.optimizer.grad_accum_steps = 2
  with pytest.raises(ValueError, match=r"config.optimizer.grad_accum_steps=2: micro-batch 4"):
    trainer_lib.check_config(c, num_devices=8, process_count=1)
  c.optimizer.grad_accum_steps = 1
  c.mesh.update(data=3, fsdp=1, tensor=1)
  with pytest.raises(ValueError, match=r"mesh .* needs 3 devices, but 8"):
    trainer_lib.check_config(c, num_devices=8, process_count=1)
  c.mesh.update(data=-1)
  c.optimizer.decay = "step"
  with pytest.raises(ValueError, match=r"config.optimizer.decay='step'"):
    trainer_lib.check_config(c, num_devices=8, process_count=1)
  c.optimizer.decay = "cosine"
  c.total_steps = 0
  with pytest.raises(ValueError, match=r"config.total_steps=0: an eval-only run"):
    trainer_lib.check_config(c, num_devices=8, process_count=1)
