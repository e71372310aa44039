"""KV-cache decoding (greedy, sampling, beam) against full-forward references."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metalm_jax.evaluate import decode, prompts
from tests.decode_fixtures import (  # noqa: F401  (autouse fixture)
    FakeTokenizer, full_float32_matmuls, tiny_model)

N_NEW = 6


def log_softmax64(x):
  x = np.asarray(x, np.float64)
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def extend(batch, new_tokens, width):
  """The prompt batch with tokens [R, t] appended as plain positions, then
  right padding (segment 0) up to `width` new positions: a fixed shape, so
  one compiled forward serves every step. Causality keeps the padding
  invisible to the real positions."""
  r, t = new_tokens.shape
  out = dict(batch)
  cat = lambda x, y: np.concatenate([np.asarray(x), y.astype(np.asarray(x).dtype)], 1)
  seg = (np.arange(width) < t).astype(np.int32)[None].repeat(r, 0)
  out["tokens"] = cat(batch["tokens"], np.pad(new_tokens, ((0, 0), (0, width - t))))
  out["positions"] = cat(batch["positions"], batch["positions"][:, -1:] + 1 + np.arange(width))
  out["segment_ids"] = cat(batch["segment_ids"], seg)
  for k, fill in (("dock_index", 0), ("dock_mask", False), ("targets", 0), ("loss_mask", 0)):
    out[k] = cat(batch[k], np.full((r, width), fill))
  return out


@functools.lru_cache(maxsize=None)
def jitted_forward(model):
  return jax.jit(lambda p, b: model.apply({"params": p}, b))


def next_logprobs(model, params, batch, new_tokens, width=N_NEW):
  """float64 log-softmax of the full-forward logits after the last new token."""
  full = jax.tree.map(jnp.asarray, extend(batch, new_tokens, width))
  at = batch["tokens"].shape[1] - 1 + new_tokens.shape[1]
  return log_softmax64(jitted_forward(model)(params, full)[:, at])


def take_rows(batch, rows):
  return jax.tree.map(lambda x: np.asarray(x)[rows], batch)


@pytest.fixture(scope="module")
def setup():
  model, params = tiny_model()
  cfg = model.cfg
  params = dict(params, decoder=dict(params["decoder"]))  # copy what changes
  # Logits x20 (final LayerNorm scale and bias): sharper next-token
  # distributions keep float32 round-off between the decoding paths far from
  # any near-tie without changing which token wins.
  params["decoder"]["final_norm"] = jax.tree.map(lambda x: 20 * x, params["decoder"]["final_norm"])
  tok = FakeTokenizer()
  pix = np.random.default_rng(0).normal(size=(16, 16, 3)).astype(np.float32)
  batch = prompts.build_batch(
      [[prompts.Image(pix), prompts.Text("question: what color answer:")],
       [prompts.Text("a cat is")]], tok, cfg)
  assert batch["dock_mask"][0].sum() == 5 and batch["segment_ids"][1, 0] == 0
  return model, params, batch


def reference_greedy(model, params, batch, n, eos):
  b = batch["tokens"].shape[0]
  ids = np.zeros((b, 0), np.int64)
  score = np.zeros(b)
  done = np.zeros(b, bool)
  for _ in range(n):
    lp = next_logprobs(model, params, batch, ids)
    nxt = lp.argmax(-1)
    score += np.where(done, 0.0, lp[np.arange(b), nxt])
    ids = np.concatenate([ids, np.where(done, 0, nxt)[:, None]], 1)
    done |= nxt == eos
  return ids, score


def first_new(ids):
  """First index >= 1 whose id did not occur before it."""
  j = next((j for j in range(1, len(ids)) if ids[j] not in ids[:j]), None)
  assert j is not None, f"greedy path {ids} repeats one id; pick another seed"
  return j


def test_kv_cache_greedy_equals_full_forward_decoding(setup):
  model, params, batch = setup
  out = decode.greedy(model, params, batch, max_new_tokens=N_NEW, eos_id=None)
  ref_ids, ref_score = reference_greedy(model, params, batch, N_NEW, eos=-1)
  np.testing.assert_array_equal(out.ids, ref_ids)
  np.testing.assert_array_equal(out.lengths, [N_NEW, N_NEW])
  np.testing.assert_allclose(out.scores, ref_score, rtol=0, atol=2e-3)
  # Stop at eos: make the first repeat-free later token of row 0 the eos id.
  j = first_new(ref_ids[0])
  eos = int(ref_ids[0, j])
  out = decode.greedy(model, params, batch, max_new_tokens=N_NEW, eos_id=eos, pad_id=0)
  ref_ids, ref_score = reference_greedy(model, params, batch, N_NEW, eos=eos)
  np.testing.assert_array_equal(out.ids, ref_ids)
  np.testing.assert_array_equal(out.ids[0], list(ref_ids[0, :j + 1]) + [0] * (N_NEW - j - 1))
  assert int(out.lengths[0]) == j
  np.testing.assert_allclose(out.scores, ref_score, rtol=0, atol=2e-3)


def test_beam_size_one_equals_greedy(setup):
  model, params, batch = setup
  g = decode.greedy(model, params, batch, max_new_tokens=N_NEW, eos_id=None)
  eos = int(g.ids[0, first_new(np.asarray(g.ids[0]))])
  g = decode.greedy(model, params, batch, max_new_tokens=N_NEW, eos_id=eos)
  bm = decode.beam_search(model, params, batch, beam_size=1, max_new_tokens=N_NEW, eos_id=eos)
  np.testing.assert_array_equal(bm.ids, g.ids)
  np.testing.assert_array_equal(bm.lengths, g.lengths)
  np.testing.assert_allclose(bm.scores, g.scores, rtol=0, atol=1e-4)


def reference_beam(model, params, batch, k, n, eos, alpha):
  """Plain-Python beam search over full forward passes, one row at a time:
  keep the K best non-eos extensions alive, move eos extensions (among the
  best 2K) to a finished pool scored logp / len**alpha, return the best."""
  results = []
  for r in range(batch["tokens"].shape[0]):
    row = take_rows(batch, [r])
    alive = [((), 0.0)]
    finished = []
    for t in range(n):
      seqs = np.array([s for s, _ in alive] + [alive[0][0]] * (k - len(alive)),
                      np.int64).reshape(k, t)  # padded to K rows: one compiled shape
      lp = next_logprobs(model, params, take_rows(row, [0] * k), seqs, width=n)
      cands = sorted(((alive[i][1] + lp[i, v], alive[i][0] + (v,))
                      for i in range(len(alive)) for v in range(lp.shape[1])), reverse=True)
      cands = cands[:2 * k]
      finished += [(score / (t + 1) ** alpha, seq) for score, seq in cands if seq[-1] == eos]
      alive = [(seq, score) for score, seq in cands if seq[-1] != eos][:k]
    pool = finished + [(score / n ** alpha, seq) for seq, score in alive]
    results.append(max(pool))
  return results


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_beam_search_equals_reference(setup, alpha):
  model, params, batch = setup
  k, n = 3, N_NEW
  g = decode.greedy(model, params, batch, max_new_tokens=n, eos_id=None)
  eos = int(g.ids[1, first_new(np.asarray(g.ids[1]))])  # row 1's greedy path would stop
  out = decode.beam_search(model, params, batch, beam_size=k, max_new_tokens=n, eos_id=eos,
                           length_penalty=alpha)
  ref = reference_beam(model, params, batch, k, n, eos, alpha)
  for r, (score, seq) in enumerate(ref):
    got = list(np.asarray(out.ids[r]))
    assert got[:len(seq)] == list(seq) and all(x == 0 for x in got[len(seq):]), (r, got, seq)
    np.testing.assert_allclose(out.scores[r], score, rtol=0, atol=2e-3)
    assert int(out.lengths[r]) == (len(seq) - 1 if seq[-1] == eos else len(seq))


def test_sampling_limits_equal_greedy(setup):
  model, params, batch = setup
  g = decode.greedy(model, params, batch, max_new_tokens=N_NEW, eos_id=None)
  for kw in (dict(temperature=1e-5), dict(top_k=1), dict(top_p=1e-6)):
    s = decode.sample(model, params, batch, jax.random.key(7), max_new_tokens=N_NEW,
                      eos_id=None, **kw)
    np.testing.assert_array_equal(s.ids, g.ids, err_msg=str(kw))
  # Ordinary sampling is reproducible per key and differs from greedy somewhere.
  runs = [decode.sample(model, params, batch, jax.random.key(i), max_new_tokens=N_NEW,
                        eos_id=None, temperature=3.0).ids for i in (0, 0, 1)]
  np.testing.assert_array_equal(runs[0], runs[1])
  assert (np.asarray(runs[0]) != np.asarray(g.ids)).any() or (
      np.asarray(runs[2]) != np.asarray(g.ids)).any()


def test_sampler_matches_numpy_distribution():
  logits = jnp.log(jnp.array([[0.4, 0.3, 0.15, 0.1, 0.05]]))
  n = 20000
  keys = jax.random.split(jax.random.key(0), n)
  p = np.array([0.4, 0.3, 0.15, 0.1, 0.05])

  @jax.jit
  def freq(temperature, top_k, top_p):
    draws = jax.vmap(lambda key: decode.sample_logits(logits, key, temperature, top_k,
                                                      top_p))(keys)[:, 0]
    return jnp.bincount(draws, length=5) / n

  cases = [
      ((1.0, 0, 1.0), p),
      ((2.0, 0, 1.0), p ** 0.5 / (p ** 0.5).sum()),
      ((1.0, 2, 1.0), np.r_[p[:2], 0, 0, 0] / p[:2].sum()),
      ((1.0, 9, 1.0), p),  # top_k above the vocabulary keeps everything
      # top_p=0.8: 0.4 + 0.3 < 0.8, so the 0.15 id is needed too.
      ((1.0, 0, 0.8), np.r_[p[:3], 0, 0] / p[:3].sum()),
      ((1.0, 0, 0.65), np.r_[p[:2], 0, 0, 0] / p[:2].sum()),
      ((1.0, 2, 0.8), np.r_[p[:2], 0, 0, 0] / p[:2].sum()),  # top_k applies first
  ]
  for settings, expected in cases:
    got = np.asarray(freq(*settings))
    np.testing.assert_allclose(got, expected, atol=0.015, err_msg=str(settings))
    assert (got[expected == 0] == 0).all(), settings


def test_bad_arguments_are_named(setup):
  model, params, batch = setup
  # The longest allowed generation feeds its last token at position max_len - 1.
  room = model.cfg.decoder.max_len - int(batch["positions"][:, -1].max())
  out = decode.greedy(model, params, batch, max_new_tokens=room, eos_id=None)
  assert np.isfinite(np.asarray(out.scores)).all() and int(out.lengths.min()) == room
  with pytest.raises(ValueError, match=f"max_new_tokens={room + 1} exceeds"):
    decode.greedy(model, params, batch, max_new_tokens=room + 1, eos_id=None)
  with pytest.raises(ValueError, match="beam_size=0"):
    decode.beam_search(model, params, batch, beam_size=0, max_new_tokens=2, eos_id=None)
  with pytest.raises(ValueError, match="temperature=0"):
    decode.sample(model, params, batch, jax.random.key(0), max_new_tokens=2, eos_id=None,
                  temperature=0.0)
  with pytest.raises(ValueError, match="top_p=1.5"):
    decode.check_sampling(1.0, 0, 1.5)
  with pytest.raises(KeyError, match="unknown decoding method 'nucleus'"):
    decode.generate(model, params, batch, "nucleus")
