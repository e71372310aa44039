"""The claims table of benchmarks/claims.py on fake run results: means over
seeds, the direction, a missing value reported as not measured (never as a
claim that holds), and the ICL curve per k."""
import pytest

from benchmarks import claims


def _results():
  return {
      "nli_metalm": [{"nli/accuracy_rank": 0.8, "nli/accuracy_generate": 0.5},
                     {"nli/accuracy_rank": 0.6, "nli/accuracy_generate": 0.3}],
      "nli_gpt": [{"nli/accuracy_rank": 0.65, "nli/accuracy_generate": 0.45},
                  {"nli/accuracy_rank": 0.7, "nli/accuracy_generate": 0.45}],
      "vl_zeroshot": [{"icl/k0/accuracy": 0.2, "icl/k1/accuracy": 0.3, "icl/k2/accuracy": 0.35,
                       "icl/k4/accuracy": 0.25, "vqa/majority_answer_accuracy": 0.1}],
  }


def test_claim_rows_means_direction_and_missing():
  rows = {r["key"]: r for r in claims.claim_rows(_results())}
  assert len(rows) == len(claims.CLAIMS)
  r = rows["nli_rank"]
  assert r["metalm"] == pytest.approx(0.7) and r["baseline"] == pytest.approx(0.675)
  assert r["metalm_runs"] == [0.8, 0.6] and r["holds"] is True
  assert rows["nli_generate"]["metalm"] == pytest.approx(0.4)
  assert rows["nli_generate"]["holds"] is False
  assert rows["icl_pretrained_k1_vs_k0"]["holds"] is True
  assert rows["icl_pretrained_k4_vs_k1"]["holds"] is False  # 0.25 < 0.3
  # a stage with no finished run: not measured, not a claim that holds
  assert rows["vqa_ft_vs_blind"]["holds"] is None and rows["vqa_ft_vs_blind"]["metalm"] is None
  md = claims.markdown(list(rows.values()))
  assert "| 0.700 (0.800 / 0.600) | GPT, finetuned in full: 0.675 (0.650 / 0.700) |" in md
  assert md.count("**no**") == 2 and "not measured" in md


def test_icl_curves():
  curves = claims.icl_curves(_results())
  assert curves["pretrained"] == pytest.approx([0.2, 0.3, 0.35, 0.25])
  assert curves["after VQA finetuning"] == curves["pretrained, bare question"] == [None] * 4
