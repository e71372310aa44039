"""Finetuning configs and layouts: every config builds and passes the trainer's
checks; the NLI run with the decoder frozen leaves the decoder bit-identical
while the text encoder learns, and its evaluator runs inside the trainer;
finetuning rows ("caption:", instruction templates, two-image pairs) are laid
out as documented."""
import json
import os

import jax
import numpy as np
import pytest

from configs import (finetune_caption, finetune_multitask, finetune_nli, finetune_nlvr2,
                     finetune_vqa)
from metalm_jax import batch as batch_lib
from metalm_jax import params_io
from metalm_jax.data import formats, pipeline, sources
from tests import world_config as testing
from metalm_jax.data import prepare
from metalm_jax.evaluate import evaluators as E
from metalm_jax.evaluate import prompts
from metalm_jax.models import metalm
from metalm_jax.train import checkpoint as ckpt_lib
from metalm_jax.train import state as state_lib
from metalm_jax.train import trainer as trainer_lib

CONFIGS = (finetune_vqa, finetune_caption, finetune_nli, finetune_multitask, finetune_nlvr2)
SMALL = dict(num_layers=1, emb_dim=32, num_heads=2, mlp_dim=64)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("tfds"))


@pytest.mark.parametrize("module", CONFIGS, ids=lambda m: m.__name__.split(".")[-1])
@pytest.mark.parametrize("size", ["tiny", "paper"])
def test_configs_build_and_pass_checks(module, size):
  c = module.get_config(f"size={size},init=/ckpt,steps=7")
  assert c.total_steps == 7 and c.init_from == "/ckpt"
  trainer_lib.check_config(c, num_devices=8, process_count=1)
  for name in c.data.mixture:
    sources.SOURCES.get(name)
  for ev in c.evals.values():
    E.resolve(ev)
  with pytest.raises(ValueError, match="size='huge'"):
    module.get_config("size=huge")


def test_nli_config_freezes_decoder_and_vision_only():
  c = finetune_nli.get_config("size=tiny")
  names = []
  model = metalm.build_model(c.model)
  dummy = jax.tree.map(jax.numpy.asarray, batch_lib.dummy_batch(c.model, 1, 8))
  abstract = state_lib.unbox(jax.eval_shape(lambda: model.init(jax.random.key(0), dummy))["params"])
  state_lib.map_with_names(lambda n, x: names.append(n), abstract)
  mask = dict(zip(names, jax.tree.leaves(state_lib.trainable_mask(abstract, c.optimizer))))
  for n, trainable in mask.items():
    top = n.split("/")[0]
    assert trainable == (top in ("encoders_text", "connectors_text")), n


def test_multitask_holds_out_a_cluster():
  c = finetune_multitask.get_config("size=tiny,heldout=vqa")
  assert sorted(c.data.mixture) == ["world_caption_instruct", "world_nli_instruct"]
  assert c.evals.heldout_vqa.source == "world_vqa" and "vqa" not in c.evals
  with pytest.raises(ValueError, match="heldout='ocr'"):
    finetune_multitask.get_config("heldout=ocr")


def _small(c, data_dir, **data):
  t = testing.test_config("vl", "tiny", data_dir, **data)
  c.data = t.data
  for part in (c.model.decoder, c.model.encoders.vision, c.model.encoders.text):
    part.update(SMALL)
  c.batch_size, c.log.every_steps, c.eval_loss.every_steps, c.eval_loss.num_batches = 4, 1, 0, 1
  c.metrics.peak_flops = 1e12
  c.checkpoint.async_save = False
  c.mesh.update(data=1, fsdp=1, tensor=1)
  return c


@pytest.mark.integration
def test_frozen_decoder_nli_finetune_with_evaluator(data_dir, tmp_path):
  c = finetune_nli.get_config("size=tiny,steps=3")
  _small(c, data_dir, mixture={"world_nli_encoded": 1.0}, seq_len=96)
  model = metalm.build_model(c.model)
  init = jax.tree.map(np.asarray, jax.device_get(
      state_lib.unbox(metalm.init_variables(model, jax.random.key(0))["params"])))
  params_io.save_params(str(tmp_path / "init"), init)
  c.init_from = str(tmp_path / "init")
  c.evals = {"nli": dict(type="classify", source="world_nli_encoded", every_steps=3,
                         num_examples=4, batch_size=4, max_new_tokens=2, bucket=96)}
  work = str(tmp_path / "run")
  out = trainer_lib.train(c, work, devices=jax.devices()[:1])
  assert out["step"] == 3 and 0 <= out["nli/accuracy_rank"] <= 1
  one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=one), init)
  final = jax.device_get(ckpt_lib.restore_params(work, target))
  same = lambda a, b: all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a),
                                                              jax.tree.leaves(b)))
  assert same(final["decoder"], init["decoder"])
  assert same(final["encoders_vision"], init["encoders_vision"])
  assert not same(final["encoders_text"], init["encoders_text"])
  assert not same(final["connectors_text"], init["connectors_text"])
  res = json.load(open(os.path.join(work, "evals", "step_3.json")))["results"]["nli"]
  assert res["accuracy_rank"] == pytest.approx(out["nli/accuracy_rank"])
  assert len(open(os.path.join(work, "evals", "nli_step_3.jsonl")).readlines()) == 4


def _rows(data_dir, mixture, n=8, **kw):
  cfg = testing.test_config("vl", "tiny", data_dir, mixture=mixture, **kw)
  batch, stats = pipeline.split_stats(next(pipeline.make_iterator(
      cfg, "train", batch_size=n, shuffle=False)))
  assert stats["truncated_text"] == 0
  return cfg, batch


def _trained_text(tok, batch, b):
  m = batch["loss_mask"][b] > 0
  return tok.decode(batch["targets"][b][m])


def test_prompted_and_instruction_rows(data_dir):
  cfg, batch = _rows(data_dir, {"world_caption_prompted": 1.0})
  tok = prepare.load_tokenizer(cfg)
  cap = tok.encode("caption:")
  for b in range(8):
    toks = list(batch["tokens"][b][batch["segment_ids"][b] > 0])
    end = toks.index(tok.image_end)
    assert toks[end + 1:end + 1 + len(cap)] == cap
    trained = batch["targets"][b][batch["loss_mask"][b] > 0]
    assert trained[-1] == tok.eod and not set(cap) & set(trained[:1])
  cfg, batch = _rows(data_dir, {"world_vqa_instruct": 1.0}, n=16, seq_len=80)
  texts = [tok.decode(batch["tokens"][b]) for b in range(16)]
  used = {i for i, t in enumerate(formats.VQA_TEMPLATES)
          for x in texts if t.split("{question}")[-1].strip() in x}
  assert len(used) >= 2  # several templates appear
  recs = pipeline.data_source(cfg.data, "world_vqa", "train")
  answers = set()
  for i in range(len(recs)):
    answers.update(tok.decode(tok.encode(a.decode()))  # as the tokenizer can spell them
                   for a in np.asarray(recs[i]["answers"]).reshape(-1))
  for b in range(16):
    assert _trained_text(tok, batch, b) in answers


def test_nli_encoded_rows_match_the_evaluator_prompt(data_dir):
  """Training rows: "P question: H" in one text-encoder item, then the plain
  tail; the evaluator's prompt for the same record is the same tokens."""
  cfg = testing.test_config("vl", "tiny", data_dir, mixture={"world_nli_encoded": 1.0},
                            seq_len=96)
  cfg.model.encoders.text.max_len = 64
  batch, stats = pipeline.split_stats(next(pipeline.make_iterator(
      cfg, "validation", batch_size=4, shuffle=False)))
  assert stats["truncated_text"] == 0
  tok = prepare.load_tokenizer(cfg)
  model = metalm.build_model(cfg.model)
  env = E.Env(cfg, model, None, tok, 0)
  ev = E.resolve(dict(type="classify", source="world_nli_encoded"))
  recs = pipeline.data_source(cfg.data, "world_nli_encoded", "validation")
  tail = tok.encode(formats.FORMATS.get("nli_encoded").templates[0])
  for b in range(4):
    seg = batch["segment_ids"][b] > 0
    toks, dock = batch["tokens"][b][seg], batch["dock_mask"][b][seg]
    n_enc = int(dock.sum())
    assert dock[1:1 + n_enc].all() and not dock[1 + n_enc:].any()  # one span after <s>
    assert list(toks[1 + n_enc:1 + n_enc + len(tail)]) == tail
    assert batch["encoders"]["text"]["mask"][b].sum() == n_enc
    assert batch["encoders"]["text"]["mask"][b, 1:].sum() == 0  # one item
  # Same record through the evaluator's format (shuffle=False: record order).
  rec = recs[0]
  fields = sources.SOURCES.get("world_nli_encoded").extract(rec, np.random.default_rng(0))
  ex = E.make_example(E.format_of(ev), fields, env, ev)
  prompt = prompts.build_batch([ex.parts], tok, cfg.model)
  seg = batch["segment_ids"][0] > 0
  n = prompt["tokens"].shape[1]
  np.testing.assert_array_equal(prompt["tokens"][0], batch["tokens"][0][seg][:n])
  np.testing.assert_array_equal(prompt["dock_mask"][0], batch["dock_mask"][0][seg][:n])
  assert ex.label == formats.NLI_WORDS[int(rec["label"])]


def test_pair_rows_dock_two_images(data_dir):
  cfg = testing.test_config("vl", "tiny", data_dir, mixture={"world_pair": 1.0}, seq_len=128)
  with pytest.raises(ValueError, match="max_items >= 2"):
    next(pipeline.make_iterator(cfg, "train", batch_size=2, shuffle=False))
  cfg.model.encoders.vision.max_items = 2
  batch, stats = pipeline.split_stats(next(pipeline.make_iterator(cfg, "train", batch_size=16,
                                                                  shuffle=False)))
  assert stats["truncated_text"] == 0
  batch_lib.validate_batch(batch, cfg.model, cfg.model.decoder.vocab_size)
  tok = prepare.load_tokenizer(cfg)
  off = batch_lib.dock_offsets(cfg.model.encoders)["vision"]
  t = batch_lib.slot_length(cfg.model.encoders.vision)
  labels = []
  for b in range(16):
    starts = np.flatnonzero(batch["tokens"][b] == tok.image_start)
    assert len(starts) == 2
    for item, s in enumerate(starts):
      np.testing.assert_array_equal(batch["dock_index"][b, s + 1:s + 1 + t],
                                    off + item * t + np.arange(t))
    assert batch["encoders"]["vision"]["valid"][b].all()
    labels.append(_trained_text(tok, batch, b))
  assert set(labels) == {"true", "false"}
  # The evaluator's prompt for a record is the training row up to "answer:".
  env = E.Env(cfg, metalm.build_model(cfg.model), None, tok, 0)
  ev = E.resolve(dict(type="classify", source="world_pair"))
  rec_rng = np.random.default_rng([0, 0, 0])  # the pipeline's seed for (seed, component, index)
  fields = sources.SOURCES.get("world_pair").extract(
      pipeline.data_source(cfg.data, "world_pair", "train")[0], rec_rng)
  ex = E.make_example(E.format_of(ev), fields, env, ev)
  prompt = prompts.build_batch([ex.parts], tok, cfg.model)
  seg = batch["segment_ids"][0] > 0
  n = prompt["tokens"].shape[1]
  np.testing.assert_array_equal(prompt["tokens"][0], batch["tokens"][0][seg][:n])
  np.testing.assert_array_equal(prompt["dock_index"][0], batch["dock_index"][0][seg][:n])
  np.testing.assert_allclose(prompt["encoders"]["vision"]["pixels"][0],
                             batch["encoders"]["vision"]["pixels"][0], atol=1e-6)
  assert ex.label == _trained_text(tok, batch, 0)
  # Where the right image equals the left one (scene unchanged), the
  # statements' truth follows from the left scene's objects alone.
  from metalm_jax.media import images
  recs = pipeline.data_source(cfg.data, "world_pair", "train")
  checked = 0
  for i in range(40):
    f = sources.SOURCES.get("world_pair").extract(recs[i], np.random.default_rng([5, i]))
    left_img, _ = images.to_rgb(recs[i]["image"])
    if not np.array_equal(left_img, np.asarray(f["image_right"])):
      continue
    checked += 1
    objs = {(o["color"], o["shape"]) for o in json.loads(recs[i]["objects"])}
    s, true = f["sentence"], f["label"] == 0
    if s.startswith("the left image has more"):
      assert not true
    elif s.startswith("the two images show the same"):
      assert true
    else:
      words = s.rstrip(".").split()
      assert true == ((words[-2], words[-1]) in objs), s
  assert checked >= 5
