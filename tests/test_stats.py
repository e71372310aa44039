"""evaluate/stats.py against float64 references: the bootstrap interval
against a direct loop over resamples, seeds and drawn examples; its width
against the normal approximation; seed pooling; alignment and errors."""
import math

import numpy as np
import pytest

from metalm_jax.evaluate import stats


def _percentile(values, q):
  """Linear-interpolated percentile (q in [0, 1]) of a list, by hand."""
  s = sorted(values)
  pos = q * (len(s) - 1)
  lo = math.floor(pos)
  hi = min(lo + 1, len(s) - 1)
  return s[lo] + (pos - lo) * (s[hi] - s[lo])


def _reference(metalm, baseline, num_samples, seed, level):
  """The bootstrap written out: per resample one draw of example indices,
  the difference summed over every seed and drawn example."""
  rng = np.random.default_rng(seed)
  n, seeds = len(metalm[0]), len(metalm)
  pairs = [(metalm[s], baseline[s if len(baseline) > 1 else 0]) for s in range(seeds)]
  values = []
  for _ in range(num_samples):
    idx = rng.integers(0, n, size=n)
    total = 0.0
    for m, b in pairs:
      for j in idx:
        total += float(m[j]) - float(b[j])
    values.append(total / (seeds * n))
  tail = (1 - level) / 2
  return [_percentile(values, tail), _percentile(values, 1 - tail)]


@pytest.mark.parametrize("baseline_seeds,level", [(3, 0.95), (1, 0.9)])
def test_interval_equals_a_direct_loop(baseline_seeds, level):
  rng = np.random.default_rng(11)
  n = 37  # odd: a draw of n indices is not a whole number of 64-bit words
  metalm = [rng.normal(0.3 + 0.1 * s, 1.0, n) for s in range(3)]
  baseline = [rng.normal(0.0, 1.0, n) for _ in range(baseline_seeds)]
  got = stats.paired_bootstrap(metalm, baseline, num_samples=400, seed=5, level=level)
  want = _reference(metalm, baseline, 400, 5, level)
  np.testing.assert_allclose(got["ci95"], want, rtol=1e-12, atol=1e-12)
  assert got["n"] == n and got["seeds"] == 3 and got["level"] == level
  base = [baseline[s if baseline_seeds > 1 else 0] for s in range(3)]
  assert got["metalm"] == pytest.approx(np.mean([m.mean() for m in metalm]), rel=1e-12)
  assert got["baseline"] == pytest.approx(np.mean([b.mean() for b in base]), rel=1e-12)
  # Another seed draws other resamples: not the same interval.
  other = stats.paired_bootstrap(metalm, baseline, num_samples=400, seed=6, level=level)
  assert other["ci95"] != got["ci95"]


def test_width_matches_the_normal_approximation_and_covers_the_truth():
  """400 Bernoulli pairs, success 0.7 vs 0.5 (true difference 0.2)."""
  rng = np.random.default_rng(0)
  n = 400
  m = (rng.random(n) < 0.7).astype(np.float64)
  b = (rng.random(n) < 0.5).astype(np.float64)
  got = stats.paired_bootstrap([m], [b])
  d = m - b
  normal_width = 2 * 1.96 * d.std(ddof=1) / math.sqrt(n)
  low, high = got["ci95"]
  assert low < 0.2 < high
  assert abs((high - low) - normal_width) <= 0.2 * normal_width
  assert got["diff"] == pytest.approx(d.mean(), abs=1e-12)
  assert low > 0  # a clear effect excludes 0


def test_no_effect_includes_zero():
  same = np.random.default_rng(1).random(200)
  got = stats.paired_bootstrap([same], [same.copy()])
  assert got["diff"] == 0.0 and got["ci95"] == [0.0, 0.0]
  # Two draws of one distribution: the interval straddles 0.
  rng = np.random.default_rng(2)
  m = (rng.random(300) < 0.5).astype(float)
  b = (rng.random(300) < 0.5).astype(float)
  low, high = stats.paired_bootstrap([m], [b])["ci95"]
  assert low < 0 < high


def test_three_seeds_pool_to_the_mean_of_per_seed_differences():
  rng = np.random.default_rng(3)
  n = 50
  metalm = [rng.random(n) + 0.05 * s for s in range(3)]
  baseline = [rng.random(n) for _ in range(3)]
  got = stats.paired_bootstrap(metalm, baseline, num_samples=200)
  per_seed = [float(np.mean(m) - np.mean(b)) for m, b in zip(metalm, baseline)]
  assert got["diff"] == pytest.approx(np.mean(per_seed), rel=1e-12)
  # One baseline seed pairs with every MetaLM seed.
  one = stats.paired_bootstrap(metalm, baseline[:1], num_samples=200)
  assert one["diff"] == pytest.approx(np.mean([np.mean(m) - np.mean(baseline[0])
                                               for m in metalm]), rel=1e-12)
  # Pooling resamples examples, not seeds: the same interval as one seed of
  # per-example seed-mean differences against zeros.
  pooled = np.mean([m - b for m, b in zip(metalm, baseline)], 0)
  flat = stats.paired_bootstrap([pooled], [np.zeros(n)], num_samples=200)
  np.testing.assert_allclose(got["ci95"], flat["ci95"], rtol=1e-12, atol=1e-15)


def test_misaligned_or_nan_inputs_are_errors():
  a, b = np.zeros(5), np.zeros(4)
  with pytest.raises(ValueError, match=r"metalm seeds have \[5\] examples and baseline seeds "
                                       r"\[4\]"):
    stats.paired_bootstrap([a], [b])
  with pytest.raises(ValueError, match="baseline has 2 seeds, metalm 3"):
    stats.paired_bootstrap([a, a, a], [a, a])
  with pytest.raises(ValueError, match=r"metalm seeds have \[5, 4\]"):
    stats.paired_bootstrap([a, b], [a])
  with pytest.raises(ValueError, match=r"baseline\[0\] has 1 non-finite .* example 2"):
    stats.paired_bootstrap([a], [np.array([0, 0, np.nan, 0, 0])])
  with pytest.raises(ValueError, match="non-finite"):
    stats.paired_bootstrap([np.array([np.inf, 0, 0, 0, 0])], [a])
  with pytest.raises(ValueError, match="no examples"):
    stats.paired_bootstrap([np.zeros(0)], [np.zeros(0)])
  with pytest.raises(ValueError, match="one 1-D array per seed"):
    stats.paired_bootstrap([np.zeros((2, 2))], [np.zeros((2, 2))])
  # A bare 1-D array is one seed.
  assert stats.paired_bootstrap(np.ones(5), a, num_samples=10)["diff"] == 1.0


def test_align_pairs_by_index_and_says_what_is_missing():
  a = [{"index": i, "accuracy": i / 10} for i in (3, 1, 2)]
  b = [{"index": i, "accuracy": 1 - i / 10} for i in (1, 2, 3)]
  ra, rb = stats.align(a, b)
  assert [r["index"] for r in ra] == [3, 1, 2] == [r["index"] for r in rb]
  np.testing.assert_allclose(stats.column(ra, "accuracy") + stats.column(rb, "accuracy"), 1.0)
  with pytest.raises(ValueError, match="2 of rows_a's 3 are missing from rows_b .*0 of rows_b's 1"):
    stats.align(a, b[:1])
  with pytest.raises(ValueError, match="index=1 twice"):
    stats.align(a, b + b[:1])
  with pytest.raises(ValueError, match=r"rows_b\[0\] has no 'index'"):
    stats.align(a, [{"idx": 1}])


def test_column_reads_per_k_entries_and_booleans():
  rows = [{"k4": {"score": 0.5}, "correct_rank": True}, {"k4": {"score": 0.25},
                                                         "correct_rank": False}]
  np.testing.assert_array_equal(stats.column(rows, "k4.score"), [0.5, 0.25])
  np.testing.assert_array_equal(stats.column(rows, "correct_rank"), [1.0, 0.0])
  with pytest.raises(ValueError, match=r"rows\[0\] has no 'k2.score'"):
    stats.column(rows, "k2.score")


def test_majority_share():
  assert stats.majority_share(["dax", "wug", "dax", "dax"]) == 0.75
  assert stats.majority_share(["dax"] * 9 + ["wug"]) >= stats.SINGLE_CLASS_SHARE == 0.9
  assert math.isnan(stats.majority_share([]))


def test_verdict_holds_only_above_zero_and_without_a_single_class():
  rng = np.random.default_rng(5)
  m = (rng.random(300) < 0.8).astype(float)
  b = (rng.random(300) < 0.4).astype(float)
  varied = [str(i % 3) for i in range(300)]
  v = stats.verdict([m], [b], varied, num_samples=300)
  ref = stats.paired_bootstrap([m], [b], num_samples=300)
  assert v["ci95"] == ref["ci95"] and v["diff"] == ref["diff"]
  assert v["holds"] is True and v["flags"] == [] and v["majority_prediction_share"] == 1 / 3
  assert stats.verdict([b], [m], varied, num_samples=300)["holds"] is False  # interval below 0
  # 271 of 300 (90.3%) one answer: flagged, cannot hold; exactly 90% is not flagged
  one = ["a"] * 271 + varied[:29]
  flagged = stats.verdict([m], [b], one, num_samples=300)
  assert flagged["holds"] is False and flagged["flags"][0].startswith("single class")
  assert stats.verdict([m], [b], ["a"] * 270 + varied[:30], num_samples=300)["holds"] is True
  assert stats.verdict([m], [b], None, num_samples=300)["majority_prediction_share"] is None
