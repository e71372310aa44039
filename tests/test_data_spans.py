"""Span sampling and row layout: lengths, placement, coverage and the loss
rule, checked against a plain-loop reference."""
import numpy as np
import pytest

from metalm_jax import batch as batch_lib
from metalm_jax import presets
from metalm_jax.data import spans


@pytest.mark.parametrize("seed", range(200))
def test_sample_spans_properties(seed):
  rng = np.random.default_rng(seed)
  min_len, max_len = int(rng.integers(1, 8)), 0
  max_len = min_len + int(rng.integers(0, 10))
  ratio = float(rng.uniform(0.05, 0.6))
  max_spans = int(rng.integers(1, 6))
  # Random document segments laid end to end, each [a, b).
  intervals, pos = [], 0
  for _ in range(int(rng.integers(1, 5))):
    n = int(rng.integers(0, 60))
    intervals.append((pos + 1, pos + 1 + n))
    pos += n + 2
  out = spans.sample_spans(intervals, pos, rng, min_len, max_len, ratio, max_spans)
  target = round(ratio * pos)
  covered = sum(n for _, n in out)
  assert len(out) <= max_spans
  for k, (s, n) in enumerate(out):
    assert min_len <= n <= max_len
    assert any(a <= s and s + n <= b for a, b in intervals)  # inside one segment
    if k:
      ps, pn = out[k - 1]
      assert ps + pn < s  # at least one plain position between spans
  assert covered < target + min_len
  if covered < target and len(out) < max_spans:
    # Stopped early only because no gap of min_len is left.
    taken = np.zeros(pos + 2, bool)
    for s, n in out:
      taken[max(s - 1, 0):s + n + 1] = True
    for a, b in intervals:
      free = ~taken[a:b]
      runs = np.diff(np.flatnonzero(np.diff(np.r_[0, free.astype(int), 0])))[::2]
      assert all(r < min_len for r in runs)


def _reference_loss(row, docked):
  l = row.seq_len
  ref_mask = np.zeros(l, np.float32)
  ref_targets = np.full(l, row.pad_id)
  for t in range(l - 1):
    if row.segment_ids[t] and row.segment_ids[t + 1] == row.segment_ids[t]:
      ref_targets[t] = row.tokens[t + 1]
      if row.trainable[t + 1] and not docked[t + 1]:
        ref_mask[t] = 1.0
  return ref_targets, ref_mask


def test_layout_matches_reference_and_never_trains_on_seen_tokens():
  cfg = presets.model_config("tiny")
  offsets = batch_lib.dock_offsets(cfg.encoders)
  rng = np.random.default_rng(0)
  for _ in range(50):
    row = spans.Row(64, pad_id=0)
    row.start_segment()
    row.add_tokens([2, 5], train=False)
    img = row.add_span(batch_lib.slot_length(cfg.encoders.vision), "vision", 0)
    row.add_tokens([6], train=False)
    row.add_tokens(list(rng.integers(10, 1000, size=10)), train=True)
    row.start_segment()
    s = row.add_tokens([2] + list(rng.integers(10, 1000, size=20)), train=True)
    k = int(rng.integers(1, 10))
    txt = row.mark_span(s + 1 + int(rng.integers(0, 5)), k, "text", 1)
    out = spans.layout_arrays(row, cfg)
    docked = np.zeros(64, bool)
    docked[img.start:img.start + img.length] = True
    docked[txt.start:txt.start + k] = True
    ref_targets, ref_mask = _reference_loss(row, docked)
    np.testing.assert_array_equal(out["targets"], ref_targets)
    np.testing.assert_array_equal(out["loss_mask"], ref_mask)
    np.testing.assert_array_equal(out["dock_mask"], docked)
    # Dock indices: image element j -> j; text item 1 element j -> offset + 16 + j.
    np.testing.assert_array_equal(out["dock_index"][img.start:img.start + img.length],
                                  offsets["vision"] + np.arange(img.length))
    np.testing.assert_array_equal(out["dock_index"][txt.start:txt.start + k],
                                  offsets["text"] + cfg.encoders.text.max_len + np.arange(k))
    # The span's last position predicts the first token after it.
    assert out["loss_mask"][txt.start + k - 1] == 1.0
    assert out["loss_mask"][img.start + img.length - 1] == 0.0  # target is </image>
    # No trained target is a docked token (the original code's off-by-one leak).
    t = np.flatnonzero(out["loss_mask"])
    assert not docked[t + 1].any()
    assert out["positions"][s] == 0 and out["segment_ids"][s] == 2
    enc = spans.encoder_arrays(row, cfg, {("vision", 0): np.ones((64, 64, 3), np.float32)}, 0)
    np.testing.assert_array_equal(enc["text"]["tokens"][1, :k], row.tokens[txt.start:txt.start + k])
    assert enc["text"]["mask"].sum() == k and enc["vision"]["valid"].tolist() == [True]
    batch = {kk: v[None] for kk, v in out.items()}
    batch["encoders"] = {n: {kk: v[None] for kk, v in e.items()} for n, e in enc.items()}
    batch_lib.validate_batch(batch, cfg, 1024)


def test_span_that_does_not_fit_the_encoder_is_an_error():
  cfg = presets.model_config("tiny")
  row = spans.Row(64, 0)
  row.start_segment()
  row.add_tokens(list(range(10, 40)), train=True)
  row.mark_span(1, 17, "text", 0)
  with pytest.raises(ValueError, match="length 17.*'text'"):
    spans.layout_arrays(row, cfg)
  row.spans[0] = spans.Span(1, 4, "text", 2, row.tokens[1:5])
  with pytest.raises(ValueError, match="span item 2"):
    spans.layout_arrays(row, cfg)
  with pytest.raises(ValueError, match="row overflow"):
    row.add_tokens(list(range(40)), train=True)
