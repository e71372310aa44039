"""The loss without full float32 logits (models/chunked_loss.py,
`model.decoder.loss_chunk`): loss sums and gradients equal the plain path's
(optax CE on the full float32 logits, models/loss.py `loss_sums`), the train
and eval steps take it, and the compiled step's temporaries shrink.

Tolerances: float32, chunked against plain, 1e-5 relative on the loss sum;
every gradient leaf within 1e-5 of the leaf's largest |entry| (entries that
sums cancel differ by float32 rounding of another summation order, ~2e-7
absolute at entries ~1, measured) + 1e-7 absolute (leaves whose exact
gradient is zero, e.g. a projection bias the softmax cancels, hold float32
noise ~1e-8); the correct and weight sums are equal; the train step's
loss 1e-5 relative and the updated params 1e-5 relative + 1e-6 absolute
(Adam's first step moves each entry by about lr, whatever the gradient's
scale; the attention key bias, whose exact gradient is 0, is left out) and
the optimizer state as the gradients. bfloat16 compute: loss sum 2e-3
relative (the sums run in a different order)."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from metalm_jax import presets, storage
from metalm_jax.models import chunked_loss
from metalm_jax.models import loss as loss_lib
from metalm_jax.models import metalm
from metalm_jax.train import run_config
from metalm_jax.train import state as st
from metalm_jax.train import steps as steps_lib
from tests.train_standin import tiny_train_config

RTOL = 1e-5
SMALL = dict(vocab_size=97, num_layers=1, emb_dim=32, num_heads=4, mlp_dim=64, max_len=64)
HEADS = {
    "tied": lambda: presets.decoder(tie_embeddings=True, **SMALL),
    "untied": lambda: presets.decoder(tie_embeddings=False, **SMALL),
    "llama_untied": lambda: presets.decoder_family("llama", num_kv_heads=2, **SMALL),
}


def _close_to_scale(a, b, msg):
  """|a - b| <= RTOL x max |b| (the leaf's scale) + 1e-7."""
  b = np.asarray(b)
  np.testing.assert_allclose(a, b, rtol=0, atol=RTOL * float(np.abs(b).max()) + 1e-7,
                             err_msg=msg)


def _model(section, chunk, dtype="float32"):
  """A decoder-only MetaLM (no encoders) with `loss_chunk` = chunk."""
  cfg = presets.model_config("tiny")
  cfg.dtype = dtype
  cfg.decoder = ml_collections.ConfigDict(section.to_dict())
  cfg.decoder.loss_chunk = chunk
  cfg.encoders = ml_collections.ConfigDict()
  return metalm.build_model(cfg)


def _batch(vocab, b=2, length=24, seed=0):
  """Row 1 left-padded by 3 (segment 0, no loss); some trained positions
  masked out too."""
  rng = np.random.default_rng(seed)
  seg = np.ones((b, length), np.int32)
  seg[1, :3] = 0
  mask = (seg > 0).astype(np.float32)
  mask[:, 7] = 0.0
  mask[1, -3:] = 0.0
  batch = {"tokens": rng.integers(0, vocab, (b, length)), "targets": rng.integers(0, vocab, (
      b, length)), "segment_ids": seg, "positions": np.maximum(np.cumsum(seg, 1) - 1, 0),
           "loss_mask": mask}
  return {k: jnp.asarray(v, jnp.float32 if k == "loss_mask" else jnp.int32)
          for k, v in batch.items()}


def _params(model, seed=0):
  return st.unbox(metalm.init_variables(model, jax.random.key(seed), 1, 8)["params"])


def _grad_sums(model):
  def f(params, batch):
    s, c, w = loss_lib.model_loss_sums(model, params, batch)
    return s, (c, w)
  return jax.jit(jax.value_and_grad(f, has_aux=True), compiler_options=metalm.FAST_COMPILE)


def test_chunked_loss_sums_equal_loss_sums_for_any_chunk():
  """The scan alone against loss_sums on full logits: value and gradients
  in hidden and head weights, chunks dividing L = 24 or not, or past it."""
  rng = np.random.default_rng(0)
  b, length, d, v = 3, 24, 16, 50
  hidden = jnp.asarray(rng.normal(size=(b, length, d)), jnp.float32)
  w_out = jnp.asarray(rng.normal(size=(d, v)) / 4, jnp.float32)
  targets = jnp.asarray(rng.integers(0, v, (b, length)), jnp.int32)
  weights = jnp.asarray(rng.random((b, length)) < 0.7, jnp.float32)

  def plain(h, w):
    s, c, n = loss_lib.loss_sums(h @ w, targets, weights)
    return s, (c, n)
  (s0, (c0, n0)), g0 = jax.value_and_grad(plain, argnums=(0, 1), has_aux=True)(hidden, w_out)
  for chunk in (1, 5, 8, 24, 100):
    def chunked(h, w, chunk=chunk):
      s, c, n = chunked_loss.chunked_loss_sums(lambda x: x @ w, h, targets, weights, chunk)
      return s, (c, n)
    (s, (c, n)), g = jax.jit(jax.value_and_grad(chunked, argnums=(0, 1), has_aux=True))(
        hidden, w_out)
    np.testing.assert_allclose(s, s0, rtol=RTOL, err_msg=f"chunk {chunk}")
    assert float(c) == float(c0) and float(n) == float(n0), chunk
    for a, ref in zip(g, g0):
      _close_to_scale(a, ref, f"chunk {chunk}")


@pytest.mark.parametrize("head", sorted(HEADS))
def test_model_value_gradient_and_eval_step_equal_the_plain_loss(head):
  """Tied embedding, lm_head, a Llama decoder (untied, RMSNorm, gated MLP):
  train loss and gradients (and, for lm_head, the eval step), chunks of 5
  (not dividing 24)."""
  section = HEADS[head]()
  plain, chunked = _model(section, 0), _model(section, 5)
  batch = _batch(section.vocab_size)
  params = _params(plain)
  (s0, (c0, w0)), g0 = _grad_sums(plain)(params, batch)
  assert float(w0) < batch["loss_mask"].size  # some positions are masked
  (s, (c, w)), g = _grad_sums(chunked)(params, batch)
  np.testing.assert_allclose(s, s0, rtol=RTOL, err_msg=head)
  assert float(c) == float(c0) and float(w) == float(w0), head
  jax.tree.map(lambda a, b: _close_to_scale(a, b, head), g, g0)
  if head != "untied":
    return  # the eval step once (its compile is the test's cost)
  ev = loss_lib.make_eval_step(chunked)
  out = jax.jit(ev, compiler_options=metalm.FAST_COMPILE)(params, batch)
  np.testing.assert_allclose(out["loss_sum"], s0, rtol=RTOL)
  assert float(out["correct_sum"]) == float(c0) and float(out["weight"]) == float(w0)
  jaxpr = str(jax.make_jaxpr(ev)(params, batch))
  assert "scan" in jaxpr and f"f32[2,24,{section.vocab_size}]" not in jaxpr


def test_bfloat16_compute_keeps_bfloat16_logits_and_agrees():
  section = HEADS["tied"]()
  plain, chunked = _model(section, 0, "bfloat16"), _model(section, 8, "bfloat16")
  batch = _batch(section.vocab_size)
  params = _params(plain, 2)
  hidden = chunked.apply({"params": params}, batch, method="hidden_states")
  logits = chunked.apply({"params": params}, hidden[:, :8], method="head")
  assert hidden.dtype == jnp.bfloat16 and logits.dtype == jnp.bfloat16
  a = jax.jit(loss_lib.make_eval_step(plain))(params, batch)
  b = jax.jit(loss_lib.make_eval_step(chunked))(params, batch)
  np.testing.assert_allclose(b["loss_sum"], a["loss_sum"], rtol=2e-3)
  assert float(b["weight"]) == float(a["weight"])


def test_train_step_gives_the_same_loss_and_update():
  c = tiny_train_config()
  section = HEADS["untied"]()
  model0, model1 = _model(section, 0), _model(section, 7)
  batch = _batch(section.vocab_size, b=4, length=32)
  tx = st.make_optimizer(c.optimizer, 10)
  lr = st.lr_schedule(c.optimizer, 10)
  state = st.init_state(_params(model0), tx)
  outs = [jax.jit(steps_lib.make_train_step(m, tx, c.optimizer, lr, 0),
                  compiler_options=metalm.FAST_COMPILE)(state, batch) for m in (model0, model1)]
  (s0, m0), (s1, m1) = outs
  np.testing.assert_allclose(m1["loss"], m0["loss"], rtol=RTOL)
  np.testing.assert_allclose(m1["grad_norm"], m0["grad_norm"], rtol=RTOL)
  assert float(m1["accuracy"]) == float(m0["accuracy"])
  # Adam's first moment is linear in the gradient.
  jax.tree.map(lambda a, b: _close_to_scale(a, b, "mu"), s1["opt_state"], s0["opt_state"])

  def same_update(path, a, b):
    name = jax.tree_util.keystr(path)
    if "['key']['bias']" in name:
      return  # exact gradient 0 (softmax ignores it): Adam scales float32 noise to +-lr
    np.testing.assert_allclose(a, b, rtol=RTOL, atol=1e-6, err_msg=name)
  jax.tree_util.tree_map_with_path(same_update, s1["params"], s0["params"])


def test_chunked_step_needs_fewer_temporary_bytes_at_a_large_vocab():
  """V = 32000, L = 256, B = 4, width 32: the plain step's float32 logits
  (and their gradient) are 131 MB each; chunks of 32 positions hold 1/8."""
  c = tiny_train_config()
  b, length, vocab = 4, 256, 32000
  temp = {}
  tx = st.make_optimizer(c.optimizer, 10)
  for chunk in (0, 32):
    model = _model(presets.decoder(vocab_size=vocab, num_layers=1, emb_dim=32, num_heads=2,
                                   mlp_dim=64, max_len=256), chunk)
    params = st.unbox(metalm.abstract_variables(model)["params"])
    state = jax.eval_shape(lambda p=params: st.init_state(p, tx))
    ints = jax.ShapeDtypeStruct((b, length), jnp.int32)
    batch = {"tokens": ints, "targets": ints, "positions": ints, "segment_ids": ints,
             "loss_mask": jax.ShapeDtypeStruct((b, length), jnp.float32)}
    step = steps_lib.make_train_step(model, tx, c.optimizer, st.lr_schedule(c.optimizer, 10), 0)
    compiled = jax.jit(step).lower(state, batch).compile()
    temp[chunk] = compiled.memory_analysis().temp_size_in_bytes
  msg = (f"temp bytes of the train step at B={b} L={length} V={vocab}: plain {temp[0]:,}, "
         f"chunked (32 positions) {temp[32]:,}")
  print(msg)
  assert temp[32] < temp[0] / 3, msg


def test_config_field_is_checked_and_an_old_run_resumes_without_drift(tmp_path):
  """loss_chunk < 0 fails at build naming the field; a run written before
  the field existed resumes at 0 silently and at N > 0 with a logged change
  (the same loss: resumable)."""
  bad = presets.model_config("tiny")
  bad.decoder.loss_chunk = -1
  with pytest.raises(ValueError, match=r"model.decoder.loss_chunk=-1"):
    metalm.build_model(bad)
  now = {"model": {"decoder": presets.decoder().to_dict()}}
  old = {"model": {"decoder": {k: v for k, v in now["model"]["decoder"].items()
                               if k != "loss_chunk"}}}
  storage.write_json(str(tmp_path / run_config.RUN_CONFIG_FILE), old)
  assert run_config.check_resume(str(tmp_path), now) == []
  now["model"]["decoder"]["loss_chunk"] = 64
  assert run_config.check_resume(str(tmp_path), now) == [
      "model.decoder.loss_chunk: <absent> (checkpoint) -> 64 (now)"]
