"""The audio/video benchmark's rows (benchmarks/av_tasks.py: MetaLM -
baseline with a paired bootstrap interval) from fake per-example evaluator
rows, checked against a direct numpy computation, and the evaluators'
modality-blind inputs (`blind`: media parts blanked, text parts kept). No
model, no data: well under a second."""
import json

import numpy as np
import pytest

from benchmarks import av_tasks
from metalm_jax.evaluate import evaluators as E
from metalm_jax.evaluate import prompts as P
from metalm_jax.evaluate.evaluators import examples, runner


def _direct(m, b, num_samples=av_tasks.NUM_SAMPLES, seed=0):
  """(mean m, mean b, mean diff, [2.5, 97.5] percentiles of the resampled
  mean diff): the bootstrap spelled out, one index draw per resample."""
  d = np.asarray(m, np.float64) - np.asarray(b, np.float64)
  rng = np.random.default_rng(seed)
  means = [d[rng.integers(0, len(d), size=len(d))].mean() for _ in range(num_samples)]
  return np.mean(m), np.mean(b), d.mean(), np.percentile(means, [2.5, 97.5])


def _check(row, m, b):
  mm, bm, diff, (lo, hi) = _direct(m, b)
  assert row["metalm"] == pytest.approx(mm, abs=1e-12)
  assert row["baseline_value"] == pytest.approx(bm, abs=1e-12)
  assert row["diff"] == pytest.approx(diff, abs=1e-12)
  assert row["ci95"] == pytest.approx([lo, hi], abs=1e-12)
  assert row["n"] == len(m)


def _fake_evals(n=60):
  rng = np.random.default_rng(1)
  # video QA: varied answers, MetaLM well above the majority answer, close to blind.
  acc = rng.choice([0.0, 0.3, 0.6, 1.0], size=n, p=[0.2, 0.1, 0.2, 0.5])
  maj = rng.choice([0.0, 1.0], size=n, p=[0.7, 0.3])
  blind = np.clip(acc + rng.choice([-0.3, 0.0, 0.3], size=n), 0.0, 1.0)
  answers = ["left", "right", "up", "down", "red", "blue"]
  vqa = [dict(index=10 + i, prediction=answers[i % 6], accuracy=float(acc[i]),
              majority_accuracy=float(maj[i])) for i in range(n)]
  order = rng.permutation(n)  # the blind evaluator's rows in another order
  vqa_blind = [dict(index=10 + int(i), prediction="left", accuracy=float(blind[i]))
               for i in order]
  # audio caption: MetaLM scores above both baselines on every clip, but one
  # caption for 95% of the clips: flagged single class, never holding.
  cider = rng.uniform(0.8, 1.5, size=n)
  fixed = rng.uniform(0.0, 0.4, size=n)
  silent = rng.uniform(0.2, 0.6, size=n)
  k = int(0.95 * n)
  caps = ["a loud red circle."] * k + [f"a quiet blue square {i}." for i in range(n - k)]
  cap = [dict(index=i, prediction=caps[i], CIDEr=float(cider[i]), fixed_CIDEr=float(fixed[i]))
         for i in range(n)]
  cap_blind = [dict(index=i, prediction="a sound.", CIDEr=float(silent[i]))
               for i in reversed(range(n))]
  evals = {"audio caption": {"caption": cap, "blind": cap_blind},
           "video QA": {"vqa": vqa, "blind": vqa_blind}}
  return evals, dict(acc=acc, maj=maj, blind=blind, cider=cider, fixed=fixed, silent=silent)


def test_rows_are_paired_bootstrap_differences():
  evals, v = _fake_evals()
  rows = av_tasks.rows_of(evals)
  assert [(r["task"], r["metric"], r["baseline"]) for r in rows] == [
      ("audio caption", "CIDEr", "most frequent training caption"),
      ("audio caption", "CIDEr", "same model, silent clip"),
      ("video QA", "accuracy", "majority answer"),
      ("video QA", "accuracy", "same model, blank video")]
  _check(rows[0], v["cider"], v["fixed"])
  _check(rows[1], v["cider"], v["silent"])  # blind rows paired by index, not by position
  _check(rows[2], v["acc"], v["maj"])
  _check(rows[3], v["acc"], v["blind"])
  # Single class: every caption row is flagged and fails although its interval is above 0.
  for r in rows[:2]:
    assert r["ci95"][0] > 0 and r["holds"] is False
    assert r["majority_prediction_share"] == pytest.approx(0.95)
    assert r["flags"] == ["single class: one prediction for 95% of examples"]
  # Varied answers: holds exactly when the interval lies above 0.
  assert rows[2]["flags"] == [] and rows[2]["ci95"][0] > 0 and rows[2]["holds"] is True
  assert rows[3]["ci95"][0] <= 0 and rows[3]["holds"] is False
  assert rows[2]["majority_prediction_share"] == pytest.approx(1 / 6, abs=0.01)
  json.dumps(rows)  # av_tasks.json

  md = av_tasks.markdown(rows).splitlines()
  assert len(md) == 2 + 4 and "diff [95% CI]" in md[0]
  lo, hi = rows[0]["ci95"]
  assert md[2] == ("| audio caption (60 clips) | CIDEr | {:.3f} | most frequent training caption "
                   "| {:.3f} | {:+.3f} [{:+.3f}, {:+.3f}] | **no** (single class: one "
                   "prediction for 95% of examples) |").format(
                       rows[0]["metalm"], rows[0]["baseline_value"], rows[0]["diff"], lo, hi)
  assert md[3].startswith("|  | CIDEr | ")
  assert md[4].startswith("| video QA (60 clips) | accuracy | ") and md[4].endswith("| yes |")
  assert md[5].endswith("| **no** |")


def test_rows_refuse_missing_or_unpaired_examples(tmp_path):
  evals, _ = _fake_evals(8)
  vqa = evals["video QA"]
  with pytest.raises(KeyError):  # no blind evaluator: an error, never a silent row
    av_tasks.rows_of({"video QA": {"vqa": vqa["vqa"]}})
  with pytest.raises(ValueError, match="pair"):  # the blind run scored other clips
    av_tasks.rows_of({"video QA": {"vqa": vqa["vqa"], "blind": vqa["blind"][1:]}})
  no_majority = [{k: x for k, x in r.items() if k != "majority_accuracy"} for r in vqa["vqa"]]
  with pytest.raises(ValueError, match="majority_accuracy"):  # no training answer
    av_tasks.rows_of({"video QA": {"vqa": no_majority, "blind": vqa["blind"]}})
  # The predictions files the runner writes are what the benchmark reads back.
  runner.write_results(str(tmp_path), 7, {"vqa": {}}, {"vqa": vqa["vqa"]})
  assert av_tasks.eval_rows(str(tmp_path), "vqa", 7) == vqa["vqa"]
  with pytest.raises(FileNotFoundError):
    av_tasks.eval_rows(str(tmp_path), "blind", 7)


def test_blank_zeroes_media_and_keeps_text():
  rng = np.random.default_rng(0)
  parts = [P.Audio(rng.normal(size=16).astype(np.float32), encoder="audio"),
           P.Video(rng.normal(size=(2, 4, 4, 3)).astype(np.float32)),
           P.Image(rng.normal(size=(4, 4, 3))), P.Text("question: which object moved? answer:")]
  out = [examples.blank(p) for p in parts]
  for before, after, field in zip(parts, out, ("waveform", "frames", "pixels")):
    a = getattr(after, field)
    assert type(after) is type(before) and a.shape == getattr(before, field).shape
    assert a.dtype == getattr(before, field).dtype and not np.any(a)
  assert out[0].encoder == "audio" and out[3] is parts[3]
  assert E.resolve(dict(type="vqa"))["blind"] is False
