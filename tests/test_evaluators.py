"""Evaluators on the small test world with a randomly initialised tiny model:
metrics recomputed independently from the written predictions, generation
and label ranking against unbatched float64 references, the ICL layout,
the loss evaluator against a float64 cross-entropy, output files, errors."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metalm_jax import batch as batch_lib
from metalm_jax.data import formats, pipeline
from tests import world_config as testing
from tests.eval_fixtures import append_tokens
from metalm_jax.evaluate import evaluators as E
from metalm_jax.evaluate import metrics as metrics_lib
from metalm_jax.evaluate import prompts as P
from metalm_jax.models import metalm


@pytest.fixture(scope="module")
def env(tmp_path_factory):
  return testing.small_eval_env(str(tmp_path_factory.mktemp("tfds")))


def _ev(**kw):
  return E.resolve({"bucket": 64, **kw})  # one prompt length: few compiles


def _logits64(env, model, batch):
  out = _jit_apply(model)({"params": env.params}, jax.tree.map(jnp.asarray, batch))
  return np.asarray(out, np.float64)


def test_generation_batched_equals_one_by_one_full_forward(env):
  """Batched, bucketed, left-padded greedy decoding with the KV cache gives
  what full forward passes over each unpadded prompt give (rows right-padded
  to one width: causal attention never looks right, so logits at the last
  real position are those of the bare prompt)."""
  ev = _ev(type="vqa", source="world_vqa", num_examples=3, batch_size=2, max_new_tokens=3)
  examples, _ = E.load_examples(env, ev, "validation", 3, 0)
  got = E.generate_texts(env, env.model, env.params, [e.parts for e in examples], ev)
  tok = env.tokenizer
  rows0 = [P.build_batch([ex.parts], tok, env.model.cfg) for ex in examples]
  ids = [[] for _ in examples]
  done = [False] * len(examples)
  for _ in range(3):
    rows = [append_tokens(r, i, tok.pad) for r, i in zip(rows0, ids)]
    logits = _logits_right_padded(env, env.model, rows)
    for b, (r, lg) in enumerate(zip(rows, logits)):
      nxt = int(np.argmax(lg[r["tokens"].shape[1] - 1]))
      done[b] = done[b] or nxt == tok.eos
      if not done[b]:
        ids[b].append(nxt)
  assert got == [tok.decode(i).strip() for i in ids]


WIDTH = 128


def _logits_right_padded(env, model, rows):
  """float64 logits [R, WIDTH, V] of one-row batches right-padded to WIDTH."""
  def pad(x, fill=0):
    return np.concatenate([x, np.full((1, WIDTH - x.shape[1]), fill, x.dtype)], 1)
  keys = ("tokens", "targets", "loss_mask", "segment_ids", "positions", "dock_index", "dock_mask")
  batch = {k: np.concatenate([pad(r[k]) for r in rows]) for k in keys}
  batch["encoders"] = jax.tree.map(lambda *xs: np.concatenate(xs),
                                   *[r["encoders"] for r in rows])
  out = _jit_apply(model)({"params": env.params}, jax.tree.map(jnp.asarray, batch))
  return np.asarray(out, np.float64)


_APPLY = {}


def _jit_apply(model):
  if model not in _APPLY:
    _APPLY[model] = jax.jit(model.apply)
  return _APPLY[model]


def test_vqa_evaluator_metrics_and_files(env, tmp_path):
  ev = dict(type="vqa", source="world_vqa", num_examples=5, batch_size=4, max_new_tokens=3,
            num_baseline_examples=40, every_steps=10, bucket=64)
  env.config.evals = {"v": ev}
  out = E.run_evals(env.config, env.model, env.params, 20, str(tmp_path))
  rows = [json.loads(l) for l in open(tmp_path / "evals" / "v_step_20.jsonl")]
  assert len(rows) == 5
  acc = np.mean([metrics_lib.vqa_accuracy(r["prediction"], r["references"]) for r in rows])
  assert out["v/accuracy"] == pytest.approx(acc, abs=1e-9)
  assert all(r["prompt"].startswith("<image> question: ") and r["prompt"].endswith("answer:")
             for r in rows)
  # The majority baseline: the most frequent training answer, scored on the same refs.
  ev_c = E.resolve(ev)
  train, _ = E.load_examples(env, ev_c, "train", 40, 1)
  labels = [e.label for e in train]
  answer = max(set(labels), key=labels.count)
  base = [metrics_lib.vqa_accuracy(answer, r["references"]) for r in rows]
  assert out["v/majority_answer_accuracy"] == pytest.approx(np.mean(base), abs=1e-9)
  # Per-example columns (the pairing data of evaluate/stats.py), indexed by record.
  assert [r["majority_accuracy"] for r in rows] == pytest.approx(base, abs=1e-12)
  assert [r["accuracy"] for r in rows] == pytest.approx(
      [metrics_lib.vqa_accuracy(r["prediction"], r["references"]) for r in rows], abs=1e-12)
  assert [r["index"] for r in rows] == [e.index for e in E.load_examples(
      env, ev_c, "validation", 5, 0)[0]]
  saved = json.load(open(tmp_path / "evals" / "step_20.json"))
  assert saved["results"]["v"]["accuracy"] == pytest.approx(acc)
  md = open(tmp_path / "evals" / "step_20.md").read()
  assert "| v | accuracy |" in md
  # Not due at step 25 (every 10): nothing runs.
  assert E.run_evals(env.config, env.model, env.params, 25, str(tmp_path)) == {}


def test_caption_evaluator_equals_pycocoevalcap_on_its_predictions(env, tmp_path):
  env.config.evals = {"c": dict(type="caption", source="world_caption", num_examples=4,
                                batch_size=4, max_new_tokens=6, num_baseline_examples=30,
                                every_steps=1, bucket=64, meteor=False)}
  out = E.run_evals(env.config, env.model, env.params, 0, str(tmp_path))
  rows = [json.loads(l) for l in open(tmp_path / "evals" / "c_step_0.jsonl")]
  assert all(r["prompt"] == "<image> Summarize this image:" for r in rows)
  ref = metrics_lib.caption_metrics({str(r["index"]): r["prediction"] or "." for r in rows},
                                    {str(r["index"]): r["references"] for r in rows},
                                    meteor=False, spice=False)
  assert "c/METEOR" not in out
  assert out["c/CIDEr"] == pytest.approx(ref["CIDEr"], abs=1e-9)
  assert out["c/BLEU-4"] == pytest.approx(ref["BLEU-4"], abs=1e-9)
  assert out["c/fixed_caption_CIDEr"] > 0  # a world caption shares words with the refs
  # Per-example CIDEr: their mean is the corpus CIDEr, and each is the score
  # pycocoevalcap gives that id when called directly (ids in another order);
  # the fixed caption's scores differ between examples, so the order is tested.
  for column, pred in (("CIDEr", lambda r: r["prediction"] or "."),
                       ("fixed_CIDEr", lambda r: _fixed_caption(env, r))):
    got = {str(r["index"]): r[column] for r in rows}
    want = _cider_by_id({str(r["index"]): pred(r) for r in rows},
                        {str(r["index"]): r["references"] for r in rows})
    assert got == pytest.approx(want, rel=1e-12, abs=1e-15)
  assert np.mean([r["CIDEr"] for r in rows]) == pytest.approx(out["c/CIDEr"], rel=1e-9, abs=1e-12)
  fixed = np.array([r["fixed_CIDEr"] for r in rows], np.float64)
  assert fixed.mean() == pytest.approx(out["c/fixed_caption_CIDEr"], rel=1e-9)
  assert len(set(fixed.round(9))) > 1


def _fixed_caption(env, row):
  ev = E.resolve(dict(type="caption", source="world_caption", num_baseline_examples=30))
  return E.train_majority(env, ev)[0]


def _cider_by_id(preds, refs, java=None):
  """{id: CIDEr} from pycocoevalcap called directly, ids in reverse order."""
  from pycocoevalcap.cider.cider import Cider
  java = metrics_lib.java_available() if java is None else java
  ids = list(preds)[::-1]
  res = metrics_lib.tokenize_captions({k: [preds[k]] for k in ids}, java)
  gts = metrics_lib.tokenize_captions({k: refs[k] for k in ids}, java)
  _, scores = Cider().compute_score({k: gts[k] for k in ids}, {k: res[k] for k in ids})
  return dict(zip(ids, (float(x) for x in scores)))


@pytest.mark.parametrize("use_java", [False, True])
def test_per_example_cider_averages_to_the_corpus_cider(use_java):
  if use_java and not metrics_lib.java_available():
    pytest.skip("no Java")
  preds = {"7": "a red square next to a blue circle", "3": "a green triangle",
           "5": "two blue circles on the left", "1": "nothing at all"}
  refs = {"7": ["a red square and a blue circle", "red square beside blue circle"],
          "3": ["a small green triangle", "one green triangle"],
          "5": ["two blue circles", "blue circles on the left side"],
          "1": ["a yellow star", "one star"]}
  corpus, per = metrics_lib.caption_metrics_per_example(preds, refs, meteor=False,
                                                        spice=False, use_java=use_java)
  assert corpus == metrics_lib.caption_metrics(preds, refs, meteor=False, spice=False,
                                               use_java=use_java)
  cider = per["CIDEr"]
  assert sorted(cider) == sorted(preds)
  assert np.mean(list(cider.values())) == pytest.approx(corpus["CIDEr"], rel=1e-9)
  assert cider == pytest.approx(_cider_by_id(preds, refs, use_java), rel=1e-12, abs=1e-15)
  assert cider["1"] == 0.0 and len(set(cider.values())) == 4


def test_classify_rank_matches_float64_likelihoods(env, tmp_path):
  ev = _ev(type="classify", source="world_nli", num_examples=3, batch_size=4, max_new_tokens=2)
  res, rows_out = E.EVALUATORS.get("classify")(env, ev)
  examples, _ = E.load_examples(env, ev, "validation", 3, 0)
  tok = env.tokenizer
  # Premise through the text encoder, question as plain tokens.
  assert isinstance(examples[0].parts[0], P.EncodedText)
  assert isinstance(examples[0].parts[-1], P.Text)
  rows, spans = [], []
  for ex in examples:
    row = P.build_batch([ex.parts], tok, env.model.cfg)
    for word in formats.NLI_WORDS:
      cand = tok.encode(word) + [tok.eos]
      rows.append(append_tokens(row, cand, tok.pad))
      spans.append((row["tokens"].shape[1], cand))
  logits = _logits_right_padded(env, env.model, rows)
  ll = []
  for lg, (n0, cand) in zip(logits, spans):
    m = lg.max(-1, keepdims=True)
    logp = lg - m - np.log(np.exp(lg - m).sum(-1, keepdims=True))
    ll.append(sum(logp[n0 - 1 + j, c] for j, c in enumerate(cand)))
  want = list(np.asarray(ll).reshape(len(examples), 3).argmax(-1))
  res_rows = rows_out
  rows = res_rows
  assert [r["ranked"] for r in rows] == [formats.NLI_WORDS[i] for i in want]
  labels = np.array([e.label_id for e in examples])
  assert res["accuracy_rank"] == pytest.approx(float((np.array(want) == labels).mean()))
  gen_ok = [E.clean_label(r["prediction"]) == formats.NLI_WORDS[y] for r, y in zip(rows, labels)]
  assert res["accuracy_generate"] == pytest.approx(float(np.mean(gen_ok)))
  assert res["chance"] == pytest.approx(1 / 3)
  assert [r["label"] for r in rows] == [formats.NLI_WORDS[y] for y in labels]
  assert [r["correct_rank"] for r in rows] == [bool(w == y) for w, y in zip(want, labels)]
  assert [r["correct_generate"] for r in rows] == gen_ok == [r["generated_correct"] for r in rows]


def test_icl_layout_docking_and_demonstration_order(env):
  ev = _ev(type="icl", source="world_vqa", num_examples=2, demo_pool=6, shots=(0, 1, 2))
  examples, _ = E.load_examples(env, ev, "validation", 2, 0)
  pool, _ = E.load_examples(env, ev, "train", 6, 1)
  demos = E.demonstrations(pool, 2, 2, 7)
  assert demos == E.demonstrations(pool, 2, 2, 7)  # seeded
  assert len({d.index for d in demos[0]}) == 2     # distinct
  parts = P.icl_parts([(d.parts, d.label) for d in demos[0]], examples[0].parts, env.tokenizer)
  need = E.items_needed(parts, env.model.cfg)
  assert need == {"vision": 3}
  model = E.with_max_items(env.model, need)
  assert model.cfg.encoders.vision.max_items == 3 and env.model.cfg.encoders.vision.max_items == 1
  tok = env.tokenizer
  b = P.build_batch([parts], tok, model.cfg)
  t = 17  # 4x4 patches + class token
  off = batch_lib.dock_offsets(model.cfg.encoders)["vision"]
  tokens, dock = b["tokens"][0], b["dock_mask"][0]
  starts = np.flatnonzero(tokens == tok.image_start)
  assert len(starts) == 3
  # Image k docks item k (demonstrations in order, then the query).
  for k, s in enumerate(starts):
    assert dock[s + 1:s + 1 + t].all() and not dock[s] and not dock[s + 1 + t]
    np.testing.assert_array_equal(b["dock_index"][0, s + 1:s + 1 + t], off + k * t + np.arange(t))
    pix = b["encoders"]["vision"]["pixels"][0, k]
    src = (demos[0][k] if k < 2 else examples[0]).parts[0].pixels
    np.testing.assert_array_equal(pix, src)
  # Between images: question (plain), the demonstration's label (plain
  # tokens), then </s> as in its training row (tests/test_formats.py compares
  # whole demonstrations with rows).
  for k in range(2):
    seg = tokens[starts[k] + t + 2:starts[k + 1]]
    assert not dock[starts[k] + t + 2:starts[k + 1]].any()
    d = demos[0][k]
    q = d.parts[1].text
    assert list(seg) == tok.encode(q) + tok.encode(d.label) + [tok.eod]
  # The raised-max_items model gives the same logits on a one-image prompt.
  one = P.build_batch([examples[0].parts], tok, env.model.cfg)
  one3 = P.build_batch([examples[0].parts], tok, model.cfg)
  np.testing.assert_allclose(_logits64(env, env.model, one), _logits64(env, model, one3),
                             atol=1e-5)


def test_icl_evaluator_runs_all_shots(env):
  ev = _ev(type="icl", source="world_nli", num_examples=3, batch_size=3, demo_pool=5,
           shots=(0, 2), bucket=128)
  res, rows = E.EVALUATORS.get("icl")(env, ev)
  assert set(res) >= {"k0/accuracy", "k2/accuracy"}
  # k=2 prompts hold two demonstrations, each ending in its label and </s>, then the query.
  for r in rows:
    assert r["k2"]["prompt"].count("answer:") == 3
    assert r["k0"]["prompt"].count("answer:") == 1
    assert r["k2"]["prompt"].count(" </s> ") == 2 and "</s>" not in r["k0"]["prompt"]
    assert r["k2"]["prompt"].endswith(r["k0"]["prompt"])
  labels = np.array([formats.NLI_WORDS.index(r["references"][0]) for r in rows])
  for k in (0, 2):
    ok = [formats.NLI_WORDS.index(r[f"k{k}"]["prediction"]) == y for r, y in zip(rows, labels)]
    assert res[f"k{k}/accuracy"] == pytest.approx(np.mean(ok))
    assert [r[f"k{k}"]["score"] for r in rows] == [float(x) for x in ok]
    assert [r[f"k{k}"]["label"] for r in rows] == [formats.NLI_WORDS[y] for y in labels]


def test_icl_vqa_generates_with_extra_image_items(env):
  """Also under the trainer's mesh and logical rules (as run_evals runs there)."""
  import flax.linen as nn
  from metalm_jax import sharding as shard_lib
  ev = _ev(type="icl", source="world_vqa", num_examples=2, batch_size=2, demo_pool=4,
           shots=(0, 1), max_new_tokens=2, bucket=96)
  mesh = shard_lib.make_mesh(env.config.get("mesh") or dict(data=1, fsdp=1, tensor=1),
                             jax.devices()[:1])
  with jax.set_mesh(mesh), nn.logical_axis_rules(
      shard_lib.rules_from_config(env.config.get("logical_rules") or _rules())):
    res, rows = E.EVALUATORS.get("icl")(env, ev)
  for k in (0, 1):
    acc = [metrics_lib.vqa_accuracy(r[f"k{k}"]["prediction"], r["references"]) for r in rows]
    assert res[f"k{k}/accuracy"] == pytest.approx(np.mean(acc))
    assert [r[f"k{k}"]["score"] for r in rows] == pytest.approx(acc, abs=1e-12)
    assert all("label" not in r[f"k{k}"] for r in rows)
  assert all(r["k1"]["prompt"].count("<image>") == 2 for r in rows)


def _rules():
  from metalm_jax import presets
  return presets.logical_rules()


def test_loss_evaluator_matches_float64_cross_entropy(env):
  ev = _ev(type="loss", split="validation", batch_size=4, num_batches=1)
  res, _ = E.EVALUATORS.get("loss")(env, ev)
  it = pipeline.make_iterator(env.config, "validation", batch_size=4, shuffle=False,
                              num_epochs=1, seed=0)
  tot = cnt = correct = 0.0
  for _ in range(1):
    batch, _ = pipeline.split_stats(next(it))
    lg = _logits64(env, env.model, batch)
    lse = np.log(np.exp(lg - lg.max(-1, keepdims=True)).sum(-1)) + lg.max(-1)
    nll = lse - np.take_along_axis(lg, batch["targets"][..., None], -1)[..., 0]
    tot += (nll * batch["loss_mask"]).sum()
    cnt += batch["loss_mask"].sum()
    correct += ((lg.argmax(-1) == batch["targets"]) * batch["loss_mask"]).sum()
  assert res["loss"] == pytest.approx(tot / cnt, rel=1e-5)
  assert res["accuracy"] == pytest.approx(correct / cnt, abs=1e-9)
  assert res["perplexity"] == pytest.approx(np.exp(tot / cnt), rel=1e-5)
  assert res["tokens"] == cnt


def test_loss_evaluator_reuses_the_trainer_eval_step_compiled_once(env, monkeypatch):
  """The loss evaluator runs the trainer's eval step (models/loss.py); a second call with
  the same shapes neither re-traces nor re-compiles it."""
  from metalm_jax.evaluate import placement as placement_lib
  from metalm_jax.models import loss as loss_lib
  traces = []
  real = loss_lib.loss_sums
  monkeypatch.setattr(loss_lib, "loss_sums", lambda *a: traces.append(1) or real(*a))
  ev = _ev(type="loss", split="validation", batch_size=4, num_batches=1)
  pl = _placement(env, jax.devices()[:2], dict(data=2, fsdp=1, tensor=1))  # a mesh of its own
  e = E.Env(env.config, env.model, pl.put_params(env.params), env.tokenizer, 0, pl)
  compiled = len(placement_lib._COMPILED)
  first, _ = E.EVALUATORS.get("loss")(e, ev)
  assert len(traces) == 1 and len(placement_lib._COMPILED) == compiled + 1
  second, _ = E.EVALUATORS.get("loss")(e, ev)
  assert len(traces) == 1 and len(placement_lib._COMPILED) == compiled + 1
  assert first == second and first["tokens"] > 0


def test_config_errors_name_the_field(env, tmp_path):
  with pytest.raises(ValueError, match="unknown fields \\['num_exampels'\\]"):
    E.resolve(dict(type="vqa", num_exampels=3))
  with pytest.raises(ValueError, match="evals.\\*.type='bleu' is unknown"):
    E.resolve(dict(type="bleu"))
  with pytest.raises(ValueError, match="evals.\\*.source is empty"):
    E.EVALUATORS.get("vqa")(env, _ev(type="vqa"))
  with pytest.raises(ValueError, match="method='sample'"):
    E.generate_texts(env, env.model, env.params, [[P.Text("question:")]],
                     _ev(type="vqa", method="sample"))
  env.config.evals = {"v": dict(type="vqa", source="world_vqa", every_steps=1)}
  with pytest.raises(ValueError, match="not in config.evals"):
    E.run_evals(env.config, env.model, env.params, 0, str(tmp_path), names=["w"])


def _placement(env, devices, mesh):
  from metalm_jax.evaluate import placement as placement_lib
  from metalm_jax import sharding as shard_lib
  m = shard_lib.make_mesh(mesh, devices)
  rules = shard_lib.rules_from_config(_rules())
  boxed = metalm.abstract_variables(env.model)["params"]
  return placement_lib.Placement(m, rules, shard_lib.logical_shardings(boxed, m, rules))


def _run(env, placement, evs):
  e = E.Env(env.config, env.model, placement.put_params(env.params), env.tokenizer, 0, placement)
  return {name: E.EVALUATORS.get(ev.type)(e, ev) for name, ev in evs.items()}


def test_evaluators_keep_params_sharded_and_pad_uneven_batches(env, monkeypatch):
  """Under a 2x2x2 mesh (FSDP + tensor-parallel params, batch over data x
  fsdp = 4 shards) every jitted call gets the params with their shardings
  (never gathered) and batches split over the batch axes; 5 examples in
  batches of 4 rows (the last padded) and loss batches of 3 rows (padded to
  4) give what one unsharded device gives with all rows in one batch."""
  from metalm_jax.evaluate import placement as placement_lib
  from jax.sharding import NamedSharding
  sharded = _placement(env, jax.devices(), dict(data=2, fsdp=2, tensor=2))
  single = _placement(env, jax.devices()[:1], dict(data=1, fsdp=1, tensor=1))
  assert sharded.shards == 4 and single.shards == 1
  common = dict(num_examples=5, max_new_tokens=3, num_baseline_examples=0)
  evs = lambda bs: {"vqa": _ev(type="vqa", source="world_vqa", batch_size=bs, **common),
                    "classify": _ev(type="classify", source="world_nli", batch_size=bs, **common),
                    "loss": _ev(type="loss", split="validation", batch_size=3, num_batches=2)}
  calls = []
  real_call = placement_lib.Placement.call

  def spy(self, jitted, *args):
    calls.append((self, args))
    return real_call(self, jitted, *args)

  monkeypatch.setattr(placement_lib.Placement, "call", spy)
  got = _run(env, sharded, evs(2))  # batch_size 2 -> 4 rows (the batch shards)
  assert {id(p) for p, _ in calls} == {id(sharded)}
  is_sh = lambda x: isinstance(x, NamedSharding)
  want = jax.tree.leaves(sharded.params, is_leaf=is_sh)
  split = 0
  for _, (params, batch, *_) in calls:
    leaves = jax.tree.leaves(params)
    assert [x.sharding for x in leaves] == want
    split += sum(x.addressable_shards[0].data.size < x.size for x in leaves)
    for x in jax.tree.leaves(batch):
      assert x.sharding == sharded.batch and x.shape[0] % 4 == 0
      assert x.addressable_shards[0].data.shape[0] == x.shape[0] // 4
  assert split >= len(calls) * 10  # embeddings, attention and MLP kernels are split
  # The compiled functions were declared with these shardings.
  compiled = [c for c in placement_lib._COMPILED.values()
              if jax.tree.leaves(c.input_shardings[0][1], is_leaf=is_sh)[0].mesh == sharded.mesh]
  assert len(compiled) >= 3  # decoding, scoring, loss
  summed = 0  # the loss step returns sums over the batch, replicated
  for c in compiled:
    assert jax.tree.leaves(c.input_shardings[0][0], is_leaf=is_sh) == want
    assert all(s == sharded.batch for s in jax.tree.leaves(c.input_shardings[0][1], is_leaf=is_sh))
    outs = jax.tree.leaves(c.output_shardings, is_leaf=is_sh)
    summed += all(s == sharded.replicated for s in outs)
    assert all(s == sharded.batch for s in outs) or all(s == sharded.replicated for s in outs)
  assert summed == 1

  ref = _run(env, single, evs(5))
  for name in ("vqa", "classify"):
    assert got[name][1] == ref[name][1]  # predictions, in order, 5 of them
    assert len(got[name][1]) == 5
    assert got[name][0] == pytest.approx(ref[name][0], abs=1e-9)
  assert got["loss"][0]["tokens"] == ref["loss"][0]["tokens"]
  assert got["loss"][0]["loss"] == pytest.approx(ref["loss"][0]["loss"], rel=1e-5)


def test_empty_evaluation_is_nan_with_a_warning(env, caplog):
  """No tokens / no examples: NaN and a logged warning, never a perfect score."""
  res, _ = E.EVALUATORS.get("loss")(env, _ev(type="loss", split="validation", num_batches=0))
  assert np.isnan(res["loss"]) and np.isnan(res["perplexity"]) and res["tokens"] == 0
  assert "gave no trained tokens" in caplog.text
  res, rows = E.EVALUATORS.get("vqa")(env, _ev(type="vqa", source="world_vqa", num_examples=0,
                                               num_baseline_examples=0))
  assert np.isnan(res["accuracy"]) and res["examples"] == 0 and rows == []
  res, _ = E.EVALUATORS.get("classify")(env, _ev(type="classify", source="world_nli",
                                                 num_examples=0))
  assert np.isnan(res["accuracy_rank"]) and np.isnan(res["accuracy_generate"])
  assert "over no examples" in caplog.text


def test_icl_caption_rows_carry_per_example_cider(env):
  ev = _ev(type="icl", source="world_caption", num_examples=3, batch_size=3, demo_pool=3,
           shots=(0, 1), max_new_tokens=4, bucket=96)
  res, rows = E.EVALUATORS.get("icl")(env, ev)
  for k in (0, 1):
    preds = {str(r["index"]): r[f"k{k}"]["prediction"] or "." for r in rows}
    ref = metrics_lib.caption_metrics(preds, {str(r["index"]): r["references"] for r in rows},
                                      meteor=False, spice=False)
    cider = np.array([r[f"k{k}"]["score"] for r in rows], np.float64)
    assert res[f"k{k}/CIDEr"] == pytest.approx(ref["CIDEr"], abs=1e-12)
    assert cider.mean() == pytest.approx(ref["CIDEr"], rel=1e-9, abs=1e-12)
