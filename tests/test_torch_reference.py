"""The PyTorch/HF benchmark opponent (benchmarks/torch_reference.py) is the
same model as ours: with its weights converted into our tree, our MetaLM gives
its logits and loss, our trainer's steps follow its optimizer's, and both
count the same parameters and formula FLOPs."""
import ml_collections
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from benchmarks import torch_reference  # noqa: E402
from metalm_jax import batch as batch_lib  # noqa: E402
from metalm_jax import presets  # noqa: E402
from metalm_jax.models import metalm  # noqa: E402
from metalm_jax.models import loss as loss_lib  # noqa: E402
from metalm_jax.train import config_defaults, metrics  # noqa: E402

B, L = 2, 24


def _config():
  c = config_defaults.trainer_config()
  c.model = ml_collections.ConfigDict(dict(
      dtype="float32",
      decoder=presets.decoder(vocab_size=97, num_layers=2, emb_dim=32, num_heads=4, mlp_dim=64,
                              max_len=64),
      encoders=dict(vision=presets.vit(image_size=16, patch_size=8, num_layers=2, emb_dim=24,
                                       num_heads=2, mlp_dim=48,
                                       connector=presets.connector("linear")))))
  return c


def _batch(model_cfg):
  """Row 1 left-padded by 3; the image (4 patches + class token) docked after
  the first real token; loss on every real position not predicting a docked one."""
  rng = np.random.default_rng(0)
  b = batch_lib.dummy_batch(model_cfg, B, L)
  b["tokens"] = rng.integers(0, 97, (B, L)).astype(np.int32)
  b["targets"] = rng.integers(0, 97, (B, L)).astype(np.int32)
  b["segment_ids"][:] = 1
  b["segment_ids"][1, :3] = 0
  b["positions"] = np.maximum(np.cumsum(b["segment_ids"], 1) - 1, 0).astype(np.int32)
  vis = b["encoders"]["vision"]
  vis["pixels"] = rng.normal(size=vis["pixels"].shape).astype(np.float32)
  vis["valid"][:, 0] = True
  t = batch_lib.slot_length(model_cfg.encoders.vision)
  b["dock_mask"][:, 4:4 + t] = True
  b["dock_index"][:, 4:4 + t] = np.arange(t)
  b["loss_mask"] = (b["segment_ids"] > 0).astype(np.float32)
  b["loss_mask"][:, :-1] *= ~b["dock_mask"][:, 1:]
  return b


@pytest.fixture(scope="module")
def pair():
  cfg = _config()
  torch.manual_seed(0)
  ref = torch_reference.build_model(cfg.model)
  return cfg, ref, torch_reference.our_params(ref, cfg.model), _batch(cfg.model)


def test_same_logits_and_loss(pair):
  import jax
  cfg, ref, params, batch = pair
  model = metalm.build_model(cfg.model)
  ours = np.asarray(jax.jit(model.apply)({"params": params}, batch))
  tb = torch_reference.to_torch_batch(batch, cfg.model)
  with torch.no_grad():
    theirs = ref.eval()(tb).numpy()
  real = batch["segment_ids"] > 0
  np.testing.assert_allclose(ours[real], theirs[real], atol=2e-4, rtol=2e-4)
  s, _, w = loss_lib.loss_sums(ours, batch["targets"], batch["loss_mask"])
  opt, sched = torch_reference.make_optimizer(ref, cfg.optimizer, 10)
  step = torch_reference.make_train_step(ref.train(), opt, sched, cfg.optimizer.clip_norm)
  np.testing.assert_allclose(float(step(tb)), float(s / w), rtol=1e-5)


def test_hf_generate_gives_our_greedy_ids():
  """benchmarks/decode.py's race: HF `generate` on the docked prompt
  (inputs_embeds, left padding in row 1) picks our KV-cache greedy ids.
  Matmul weights x10, so that greedy does not repeat one id (as it does at
  GPT-2's init scale)."""
  from metalm_jax.evaluate import decode
  cfg = _config()
  torch.manual_seed(0)
  ref = torch_reference.build_model(cfg.model).eval()
  with torch.no_grad():
    for p in ref.parameters():
      if p.ndim >= 2:
        p.mul_(10.0)
  batch = _batch(cfg.model)
  prompt = {k: v for k, v in batch.items() if k not in ("targets", "loss_mask")}
  model = metalm.build_model(cfg.model)
  params = torch_reference.our_params(ref, cfg.model)
  ours = np.asarray(decode.greedy(model, params, prompt, max_new_tokens=12, eos_id=None).ids)
  lm = torch_reference.lm_head_model(ref)
  theirs = torch_reference.hf_greedy(ref, lm, torch_reference.to_torch_batch(batch, cfg.model), 12)
  np.testing.assert_array_equal(theirs.numpy(), ours)
  assert all(len(set(row)) > 3 for row in ours.tolist())  # not one repeated id


def test_same_params_and_formula_flops(pair):
  import jax
  cfg, ref, params, _ = pair
  assert torch_reference.count_params(ref) == metalm.count_params(params)
  trainable = jax.tree.map(lambda _: True, params)
  ours = metrics.flops_per_example(cfg.model, params, trainable, L)
  got = torch_reference.formula_flops_per_example(ref, cfg.model, L)
  assert got == pytest.approx(ours, rel=1e-12)


def test_rejects_models_it_cannot_express():
  cfg = _config()
  cfg.model.encoders.vision.connector = presets.connector("mlp")
  with pytest.raises(ValueError, match="connector.type='mlp'"):
    torch_reference.build_model(cfg.model)


def test_training_follows_the_torch_reference(tmp_path):
  """Our trainer's compiled train step (AdamW, warm-up + cosine, clipping,
  no decay on biases and scales, token-weighted loss; data-parallel over 2
  devices) against the reference's torch.optim.AdamW step, from the same
  weights on the same batch: the loss of every step and the parameters after
  the last agree. Learning rate and weight decay high enough that a wrong
  decay mask, bias correction, epsilon or schedule shows in 6 steps;
  clip_norm low enough that every step clips (Adam undoes most of a uniform
  gradient scale: clip_norm 0.6 on our side moves the parameters 8.8e-5 from
  torch's, hence the 3e-5 tolerance)."""
  import jax
  from metalm_jax import sharding as shard_lib
  from metalm_jax.train import trainer as trainer_lib
  cfg = _config()
  cfg.optimizer.update(lr=3e-3, weight_decay=0.3, warmup_steps=2, clip_norm=0.5)
  cfg.total_steps = 6
  cfg.data = ml_collections.ConfigDict(dict(seq_len=L))  # the trainer reads no data here
  torch.manual_seed(0)
  ref = torch_reference.build_model(cfg.model).train()
  t = trainer_lib.Trainer(cfg, str(tmp_path), data=None, devices=jax.devices()[:B])
  state = t.initial_state()
  ours0 = torch_reference.our_params(ref, cfg.model)
  assert jax.tree.structure(ours0) == jax.tree.structure(state["params"])
  state["params"] = jax.device_put(jax.tree.map(lambda a: np.asarray(a, np.float32), ours0),
                                   t.shardings["params"])
  np_batch = _batch(cfg.model)
  batch = shard_lib.global_batch(np_batch, t.mesh)
  opt, sched = torch_reference.make_optimizer(ref, cfg.optimizer, cfg.total_steps)
  step = torch_reference.make_train_step(ref, opt, sched, cfg.optimizer.clip_norm)
  tb = torch_reference.to_torch_batch(np_batch, cfg.model)
  ours, theirs = [], []
  with t.mesh_context():
    train_step = t.jit_train_step()
    for _ in range(cfg.total_steps):
      state, m = train_step(state, batch)
      ours.append(float(m["loss"]))
      theirs.append(float(step(tb)))
      assert float(m["grad_norm"]) > cfg.optimizer.clip_norm  # clipping in play
  np.testing.assert_allclose(ours, theirs, rtol=2e-6)  # measured 1.2e-7
  assert theirs[-1] < theirs[0] - 0.5  # it learned: the steps were not no-ops
  final = torch_reference.our_params(ref, cfg.model)
  moved = jax.tree.map(lambda a, b: np.abs(a - b).max(), final, ours0)
  err = jax.tree.map(lambda a, b: np.abs(np.asarray(a) - b).max(), state["params"], final)
  for path, e in jax.tree_util.tree_leaves_with_path(err):
    assert e <= 3e-5, (jax.tree_util.keystr(path), e)  # measured 8.9e-6; clip 0.6: 8.8e-5
  assert max(jax.tree.leaves(moved)) > 1e-2
