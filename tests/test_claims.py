"""benchmarks/claims.py: rows from the runs' per-example predictions files,
the paired bootstrap pooled over seeds, the single-class flag, the ICL
layout of the protocol (k = 4 within what pretraining docked), and a quick
run of two stages on the test world."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from benchmarks import claims
from configs.experiments import claims as protocol
from metalm_jax.data import sources

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _write_run(root, stage, seed, evaluator, rows, step=10):
  wd = os.path.join(root, stage, f"seed={seed}")
  os.makedirs(os.path.join(wd, "evals"), exist_ok=True)
  with open(os.path.join(wd, "evals", f"{evaluator}_step_{step}.jsonl"), "w") as f:
    for r in rows:
      f.write(json.dumps(r) + "\n")
  return dict(seed=seed, workdir=wd, evals_step=step)


def _nli_rows(correct, ranked, order=None):
  idx = range(len(correct)) if order is None else order
  return [{"index": int(i), "correct_rank": bool(correct[i]), "ranked": ranked[i],
           "prediction": ranked[i]} for i in idx]


ROW = next(r for r in protocol.ROWS if r["name"] == "nli_rank")


def test_record_pairs_by_index_pools_seeds_and_holds_only_above_zero(tmp_path):
  rng = np.random.default_rng(0)
  n = 300
  runs = {"nli_metalm": [], "nli_gpt": []}
  m_all, b_all = [], []
  for seed in range(3):
    m = rng.random(n) < 0.8
    b = rng.random(n) < 0.5
    labels = ["true", "false", "neither"]
    ranked = [labels[int(k)] for k in rng.integers(3, size=n)]
    # the baseline's file lists examples in another order: pairing is by index
    runs["nli_metalm"].append(_write_run(tmp_path, "nli_metalm", seed, "nli",
                                         _nli_rows(m, ranked)))
    runs["nli_gpt"].append(_write_run(tmp_path, "nli_gpt", seed, "nli",
                                      _nli_rows(b, ranked, order=rng.permutation(n))))
    m_all.append(m)
    b_all.append(b)
  rec = claims.claim_record(ROW, runs, num_samples=500)
  assert rec["n"] == n and rec["seeds"] == 3
  assert rec["metalm"] == pytest.approx(np.mean(m_all), abs=1e-12)
  assert rec["baseline"] == pytest.approx(np.mean(b_all), abs=1e-12)
  assert rec["diff"] == pytest.approx(np.mean(m_all) - np.mean(b_all), abs=1e-12)
  lo, hi = rec["ci95"]
  assert 0 < lo < rec["diff"] < hi
  assert rec["holds"] is True and rec["flags"] == []
  # reversed roles: the interval lies below 0, the row does not hold
  rev = dict(ROW, metalm=ROW["baseline"], baseline=ROW["metalm"])
  rec2 = claims.claim_record(rev, runs, num_samples=500)
  assert rec2["ci95"][1] < 0 and rec2["holds"] is False


def test_single_class_model_is_flagged_and_cannot_hold(tmp_path):
  n = 200
  labels = np.array([0] * 190 + [1] * 10)  # the majority class is 95% of the examples
  words = ["true", "false"]
  runs = {
      # MetaLM answers "true" always: right on 95%, the baseline on 50%
      "nli_metalm": [_write_run(tmp_path, "nli_metalm", 0, "nli",
                                _nli_rows(labels == 0, ["true"] * n))],
      "nli_gpt": [_write_run(tmp_path, "nli_gpt", 0, "nli",
                             _nli_rows(np.arange(n) % 2 == 0,
                                       [words[i % 2] for i in range(n)]))],
  }
  rec = claims.claim_record(ROW, runs, num_samples=300)
  assert rec["ci95"][0] > 0  # the interval alone would hold
  assert rec["holds"] is False
  assert rec["majority_prediction_share"] == pytest.approx(1.0)
  assert any("single class" in f for f in rec["flags"])


def test_missing_stage_is_not_measured(tmp_path):
  rec = claims.claim_record(ROW, {"nli_metalm": []})
  assert rec["holds"] is None and rec["ci95"] is None and rec["flags"] == ["not measured"]
  md = claims.markdown([rec])
  assert "not measured" in md


def test_docs_table_is_read_from_claims_json(tmp_path):
  rec = dict(name="x", paper="p", what="w", model="m", trains="t", baseline_what="b",
             eval="e", metalm=0.7, baseline=0.5, diff=0.2, ci95=[0.1, 0.3], n=300, seeds=3,
             holds=True, flags=[])
  cj = tmp_path / "claims.json"
  cj.write_text(json.dumps({"claims": [rec, dict(rec, name="y", holds=False)]}))
  doc = tmp_path / "claims.md"
  doc.write_text(f"intro\n{claims.DOCS_BEGIN}\nold\n{claims.DOCS_END}\noutro\n")
  claims.write_docs_table(str(cj), str(doc))
  text = doc.read_text()
  assert "1 of 2 rows hold." in text and "+0.200 [+0.100, +0.300]" in text
  assert "\nold\n" not in text and text.startswith("intro") and text.endswith("outro\n")


def test_committed_docs_table_matches_committed_claims_json():
  cj = os.path.join(ROOT, "benchmarks", "results", "claims", "claims.json")
  doc = os.path.join(ROOT, "docs", "claims.md")
  with open(cj) as f:
    result = json.load(f)
  records = result["claims"]
  with open(doc) as f:
    text = f.read()
  assert claims.markdown(records) in text
  assert claims.markdown(result["explanations"]) in text
  av = claims.av_table(os.path.join(ROOT, "benchmarks", "results", "av_tasks.md"))
  assert av.count("\n") >= 6 and av in text
  held = sum(r["holds"] is True for r in records)
  assert f"{held} of {len(records)} rows hold." in text
  assert {r["name"] for r in records} == {r["name"] for r in protocol.ROWS}
  for r in records:  # every row measured, with its interval
    assert r["ci95"] is not None and r["ci95"][0] <= r["diff"] <= r["ci95"][1], r["name"]
    assert r["holds"] == (r["ci95"][0] > 0 and not r["flags"]), r["name"]


def test_icl_layout_k4_within_what_pretraining_docked():
  """Every in-context prompt of the protocol (k = max shots + the query)
  docks no more items than a pretraining row of its model did, and the
  evaluators ask for exactly the protocol's shots."""
  k_max = max(protocol.ICL_SHOTS)
  vl = protocol.get_config("stage=vl_pretrain")
  lang = protocol.get_config("stage=lang_metalm")
  assert vl.model.encoders.vision.max_items >= k_max + 1
  assert lang.model.encoders.text.max_items >= k_max + 1
  assert "world_bind" in vl.data.mixture and "world_bind_text" in lang.data.mixture
  for stage in ("vl_zeroshot", "vqa_ft", "lang_metalm", "lang_gpt"):
    c = protocol.get_config(f"stage={stage}")
    for name, ev in c.evals.items():
      if ev.type in ("icl", "episode"):
        assert tuple(ev.shots) == protocol.ICL_SHOTS, (stage, name)
        assert c.model.decoder.max_len >= c.data.seq_len
    # the evaluation model docks what pretraining docked
    pre, n = (lang, "text") if stage.startswith("lang") else (vl, "vision")
    if n in c.model.encoders and stage != "vqa_ft":  # finetuning rows hold one image
      assert c.model.encoders[n].max_items == pre.model.encoders[n].max_items, stage
  assert vl.data.seq_len == protocol.VL_SEQ_LEN


def test_stage_configs_share_budgets():
  """MetaLM and its baseline: same pretraining tokens, same finetuning budget."""
  for m, b in (("lang_metalm", "lang_gpt"), ("nli_metalm", "nli_gpt"), ("mt_metalm", "mt_gpt")):
    cm = protocol.get_config(f"stage={m},init=/x")
    cb = protocol.get_config(f"stage={b},init=/x")
    for key in ("total_steps", "batch_size", "seed"):
      assert cm[key] == cb[key], (m, key)
    assert cm.optimizer.lr == cb.optimizer.lr and cm.data.seq_len == cb.data.seq_len
    assert cm.optimizer.warmup_steps == cb.optimizer.warmup_steps
  lm, lg = protocol.get_config("stage=lang_metalm"), protocol.get_config("stage=lang_gpt")
  assert dict(lm.data.mixture) == dict(lg.data.mixture) == protocol.LANG_MIXTURE
  assert dict(lm.optimizer.encoder_top_layers) == {"text": -1}  # the whole encoder trains
  vl_mix = dict(protocol.get_config("stage=vl_pretrain").data.mixture)
  assert vl_mix == protocol.ZERO_SHOT_VL_MIXTURE
  assert set(vl_mix) == set(sources.ZERO_SHOT_VL_SOURCES)  # the sources the leak test checks
  assert set(protocol.LANG_MIXTURE) == set(sources.LANGUAGE_SOURCES)
  assert set(protocol.MULTITASK_MIXTURE) == set(sources.MULTITASK_SOURCES)


@pytest.mark.integration
def test_quick_run_on_the_test_world(tmp_path):
  """--quick stages on the test world: VL pretraining then the zero-shot
  evaluations; the rows they feed get values and intervals."""
  env = dict(os.environ, METALM_DATA_DIR=str(tmp_path / "tfds"))
  env.pop("XLA_FLAGS", None)  # one device per run (the protocol's mesh), not conftest's 8
  wd = tmp_path / "claims"
  cmd = [sys.executable, "benchmarks/claims.py", f"--workdir={wd}", "--quick", "--world=test",
         "--stages=vl_pretrain,vl_zeroshot", "--vl_steps=2", "--examples=6"]
  p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=880)
  assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
  out = json.loads((wd / "claims.json").read_text())
  rows = {r["name"]: r for r in out["claims"]}
  for name in ("caption_vs_blind", "caption_vs_fixed", "vqa_zeroshot_vs_blind",
               "vqa_zeroshot_vs_majority", "icl_vl_bind_k4_vs_k0", "icl_vqa_pretrained_k4_vs_k0"):
    r = rows[name]
    assert r["n"] == 6 and r["seeds"] == 1 and r["ci95"][0] <= r["diff"] <= r["ci95"][1], name
    assert isinstance(r["holds"], bool)
  assert rows["nli_rank"]["holds"] is None  # its stages did not run
  assert out["icl"]["image episodes"]["mean"][0] is not None
  prov = out["provenance"]  # metalm_jax/provenance.py; devices read in a child process
  assert prov["argv"][1:] == cmd[2:] and (prov["platform"], prov["device_count"]) == ("cpu", 1)


def test_icl_prompts_at_k4_fit_a_pretraining_row(tmp_path):
  """The protocol's k = 4 prompts, built by the evaluators on the test world
  (image and text episodes, VQA in context), take no more decoder positions
  than a pretraining row of their model and dock no more items than it
  holds: the query is never on positions or items pretraining did not train."""
  from metalm_jax.data import prepare
  from metalm_jax.evaluate import prompts
  from metalm_jax.evaluate.evaluators import common, episode, examples, icl
  from metalm_jax.models import metalm
  k = max(protocol.ICL_SHOTS)
  for stage, ev_name in (("vl_zeroshot", "bind"), ("vl_zeroshot", "icl"),
                         ("lang_metalm", "icl")):
    pre = protocol.get_config("stage=" + ("lang_metalm" if stage == "lang_metalm"
                                          else "vl_pretrain"))
    c = protocol.get_config(f"stage={stage}")
    c.data.data_dir, c.data.world = str(tmp_path), "test"
    env = common.Env(c, metalm.build_model(c.model), None, prepare.load_tokenizer(c), 0)
    ev = common.resolve(dict(c.evals[ev_name], num_examples=8))
    if ev.type == "episode":
      eps, _ = episode.load_episodes(env, ev, episode.item_format(ev), "validation", 8, 0, k + 1)
      batch = episode.episode_prompts(eps, k, env.tokenizer)
    else:
      exs, _ = examples.load_examples(env, ev, "validation", 8, 0)
      pool, _ = examples.load_examples(env, ev, "train", 16, 1)
      demos = icl.demonstrations(pool, len(exs), k, 2)
      batch = [prompts.icl_parts([(d.parts, d.label) for d in ds], e.parts, env.tokenizer)
               for ds, e in zip(demos, exs)]
    assert len(batch) == 8, (stage, ev_name)
    lengths = prompts.prompt_lengths(batch, env.tokenizer, c.model)
    room = 2  # the answer's first token and </s> follow the prompt in a row
    assert max(lengths) + room <= pre.data.seq_len, (stage, ev_name, max(lengths))
    for p in batch:
      for name, n in icl.items_needed(p, c.model).items():
        assert n == k + 1 and n <= pre.model.encoders[name].max_items, (stage, ev_name, name)
