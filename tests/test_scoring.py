"""Candidate scoring against a numpy float64 log-softmax of full-forward logits."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metalm_jax import batch as batch_lib
from metalm_jax.evaluate import prompts, scoring
from tests.decode_fixtures import (  # noqa: F401  (autouse fixture)
    FakeTokenizer, full_float32_matmuls, tiny_model)


def log_softmax64(x):
  x = np.asarray(x, np.float64)
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


@pytest.fixture(scope="module")
def setup():
  model, params = tiny_model()
  cfg = model.cfg
  tok = FakeTokenizer()
  pix = np.random.default_rng(3).normal(size=(16, 16, 3)).astype(np.float32)
  batch = prompts.build_batch(
      [[prompts.Image(pix), prompts.Text("question: what color answer:")],
       [prompts.EncodedText("great film"), prompts.Text("it was")]], tok, cfg)
  return cfg, model, params, tok, batch


@functools.lru_cache(maxsize=None)
def forward(model):
  return jax.jit(lambda p, b: model.apply({"params": p}, b))


def reference_score(model, params, batch, row, cand, width=3):
  """Single row without its left padding: prompt + cand, then right padding
  to `width` candidate slots (one compiled shape per prompt); float64
  log-softmax of the full-forward logits summed over the candidate's tokens."""
  seg = np.asarray(batch["segment_ids"][row])
  start = int(np.argmax(seg > 0))
  one = jax.tree.map(lambda x: np.asarray(x)[row:row + 1], batch)
  n = len(cand)
  out = {k: np.asarray(one[k])[:, start:] for k in batch_lib.DECODER_KEYS}
  p = out["tokens"].shape[1] - 1  # the position that predicts cand[0]
  grow = lambda x, vals: np.concatenate([x, np.asarray(vals, x.dtype)[None]], 1)
  out["tokens"] = grow(out["tokens"], list(cand) + [0] * (width - n))
  out["positions"] = grow(out["positions"], out["positions"][0, -1] + 1 + np.arange(width))
  out["segment_ids"] = grow(out["segment_ids"], [1] * n + [0] * (width - n))
  for k in ("dock_index", "dock_mask", "targets", "loss_mask"):
    out[k] = grow(out[k], np.zeros(width))
  out["encoders"] = one["encoders"]
  logits = forward(model)(params, jax.tree.map(jnp.asarray, out))
  lp = log_softmax64(logits[0])
  return sum(lp[p + j, cand[j]] for j in range(n))


def test_scores_equal_numpy_log_softmax_of_full_forward(setup):
  cfg, model, params, tok, batch = setup
  cands = [[tok.encode("red"), tok.encode("blue sky"), tok.encode("a red dog")],
           [tok.encode("great"), tok.encode("awful"), tok.encode("ok ok")]]
  s = scoring.score_candidates(model, params, batch, cands, pad_id=tok.pad)
  assert s.sum.shape == (2, 3)
  for r in range(2):
    for c in range(3):
      ref = reference_score(model, params, batch, r, cands[r][c])
      np.testing.assert_allclose(float(s.sum[r, c]), ref, rtol=0, atol=1e-4)
      np.testing.assert_allclose(float(s.mean[r, c]), ref / len(cands[r][c]), rtol=0, atol=1e-4)
      assert float(s.count[r, c]) == len(cands[r][c])
  best = scoring.rank(s, "sum")
  np.testing.assert_array_equal(best, np.argmax(np.asarray(s.sum), -1))


def test_appended_batch_layout_and_contract(setup):
  cfg, model, params, tok, batch = setup
  ext = scoring.append_candidates(batch, [[[7, 8], [9]], [[10], [11, 12]]], pad_id=tok.pad)
  batch_lib.validate_batch(ext, cfg, cfg.decoder.vocab_size)
  length = batch["tokens"].shape[1]
  assert ext["tokens"].shape == (4, length + 2)
  # Row 1 = prompt 0 + [9]: one trained position (the prompt's last), then padding.
  np.testing.assert_array_equal(ext["tokens"][1, length:], [9, tok.pad])
  np.testing.assert_array_equal(ext["loss_mask"][1], np.eye(length + 2)[length - 1])
  assert ext["targets"][1, length - 1] == 9
  np.testing.assert_array_equal(ext["segment_ids"][1, length:], [1, 0])
  assert ext["positions"][1, length] == batch["positions"][0, -1] + 1
  # Row 3 = prompt 1 + [11, 12]; the encoder inputs follow their prompt.
  np.testing.assert_array_equal(ext["loss_mask"][3, length - 1:], [1, 1, 0])
  np.testing.assert_array_equal(ext["targets"][3, length - 1:length + 1], [11, 12])
  np.testing.assert_array_equal(ext["encoders"]["text"]["tokens"][3],
                                batch["encoders"]["text"]["tokens"][1])
  np.testing.assert_array_equal(ext["dock_mask"][2, :length], batch["dock_mask"][1])


def test_shared_choices_equal_per_row_candidates(setup):
  cfg, model, params, tok, batch = setup
  words = [tok.encode("yes"), tok.encode("no")]
  a = scoring.score_choices(model, params, batch, words, pad_id=tok.pad)
  b = scoring.score_candidates(model, params, batch, [words, words], pad_id=tok.pad)
  np.testing.assert_allclose(a.sum, b.sum, rtol=0, atol=1e-6)


def test_bad_candidates_are_named(setup):
  cfg, model, params, tok, batch = setup
  with pytest.raises(ValueError, match="candidates has 1 rows"):
    scoring.append_candidates(batch, [[[5]]], pad_id=0)
  with pytest.raises(ValueError, match="same, non-zero number"):
    scoring.append_candidates(batch, [[[5]], [[5], [6]]], pad_id=0)
  with pytest.raises(ValueError, match="empty"):
    scoring.append_candidates(batch, [[[]], [[5]]], pad_id=0)
  with pytest.raises(ValueError, match="max_len=64"):
    scoring.score_choices(model, params, batch, [[5] * 60], pad_id=0)
  with pytest.raises(ValueError, match="by='max'"):
    scoring.rank(scoring.Scores(np.zeros((1, 2)), np.zeros((1, 2)), np.ones((1, 2))), by="max")
