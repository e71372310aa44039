"""The `episode` evaluator on the small test world with a randomly
initialised tiny model, over a source registered here: five items per
record (the world's interleaved images and captions, labels drawn from the
record's seeded rng). Checked: the in-context layout (each demonstration's
input, BIND_PROMPT, its name, `</s>`; the query last), the label ranking
against float64 log-likelihoods of unpadded full forward passes, the
metrics against the rows, blind items, and the configuration errors."""
import collections

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metalm_jax import batch as batch_lib
from metalm_jax.data import formats, sources
from tests import world_config as testing
from metalm_jax.data.builders.common import as_str
from metalm_jax.evaluate import evaluators as E
from metalm_jax.evaluate import prompts as P
from tests.eval_fixtures import append_tokens

NAMES = formats.BIND_NAMES
PROMPT = formats.BIND_PROMPT
ITEMS = 5


@pytest.fixture(scope="module")
def env(tmp_path_factory):
  return testing.small_eval_env(str(tmp_path_factory.mktemp("tfds")))


def _extract(r, rng):
  """Five items from the record's interleaved document (its images in turn,
  their first captions as texts); labels drawn from `rng`."""
  images = list(r["doc_images"])
  captions = np.asarray(r["doc_captions"])
  labels = rng.integers(0, len(NAMES), size=ITEMS)
  return {"items": [{"image": images[j % len(images)],
                     "text": as_str(captions[j % len(images)][0]), "label": int(labels[j])}
                    for j in range(ITEMS)]}


@pytest.fixture
def registered(env, monkeypatch):
  """Sources "test_episode_image" / "test_episode_text" (tasks episode_image /
  episode_text, item formats bind_image / bind_text of data/formats.py) while
  a test runs: registered after the world's tokenizer is trained and removed
  after the test, so no other test's prompt vocabulary changes."""
  world = sources.SOURCES.get("world_caption")
  for task in ("image", "text"):
    src = sources.Source(f"episode_{task}", world.dataset, world.splits, _extract, True)
    monkeypatch.setitem(sources.SOURCES._items, f"test_episode_{task}", src)


def _ev(**kw):
  return E.resolve({"type": "episode", "bucket": 64, **kw})


def _want_labels(i, seed=0):
  """Item labels of record i, drawn as `_extract` draws them (seeded per record)."""
  return [NAMES[int(y)] for y in np.random.default_rng([seed, i]).integers(0, len(NAMES),
                                                                             size=ITEMS)]


def test_prompts_bind_each_item_in_order(env, registered):
  ev = _ev(source="test_episode_image", num_examples=2)
  fmt = E.item_format(ev)
  assert fmt is formats.FORMATS.get("bind_image")
  episodes, skipped = E.load_episodes(env, ev, fmt, "validation", 2, 0, ITEMS)
  assert skipped == 0 and len(episodes) == 2
  for ep in episodes:
    assert [e.label for e in ep] == _want_labels(ep[0].index)
  tok = env.tokenizer
  ep = episodes[1]
  parts = E.episode_prompts(episodes, 4, tok)[1]
  model = E.model_for(env.model, [parts])
  assert model.cfg.encoders.vision.max_items == ITEMS
  b = P.build_batch([parts], tok, model.cfg)
  t = 17  # 4x4 patches + class token
  off = batch_lib.dock_offsets(model.cfg.encoders)["vision"]
  tokens, dock = b["tokens"][0], b["dock_mask"][0]
  starts = np.flatnonzero(tokens == tok.image_start)
  assert len(starts) == ITEMS
  for k, s in enumerate(starts):  # image k docks item k: the demonstrations, then the query
    np.testing.assert_array_equal(b["dock_index"][0, s + 1:s + 1 + t], off + k * t + np.arange(t))
    np.testing.assert_array_equal(b["encoders"]["vision"]["pixels"][0, k], ep[k].parts[0].pixels)
  assert not np.array_equal(ep[0].parts[0].pixels, ep[1].parts[0].pixels)
  for k in range(ITEMS - 1):  # between images: the prompt, the item's name, </s>
    seg = tokens[starts[k] + t + 2:starts[k + 1]]
    assert not dock[starts[k] + t + 2:starts[k + 1]].any()
    assert list(seg) == tok.encode(PROMPT) + tok.encode(ep[k].label) + [tok.eod]
  assert list(tokens[starts[-1] + t + 2:]) == tok.encode(PROMPT)  # the query's name is asked
  # k = 0 is the query alone; the blind option blanks every item, same records.
  assert E.episode_prompts(episodes, 0, tok)[1] == ep[-1].parts
  blind, _ = E.load_episodes(env, _ev(source="test_episode_image", blind=True), fmt,
                             "validation", 2, 0, ITEMS)
  assert [e.index for e in blind[1]] == [e.index for e in ep]
  assert all(not e.parts[0].pixels.any() for e in blind[1])


def test_a_record_with_an_unusable_item_is_skipped_whole(env, registered, monkeypatch):
  """Even records get an out-of-range label on item 2: the first usable
  records are the odd ones, the even ones before them are counted."""
  def extract(r, rng):
    out = _extract(r, rng)
    if int(r["id"]) % 2 == 0:
      out["items"][2]["label"] = len(NAMES)
    return out
  src = sources.SOURCES.get("test_episode_image")
  monkeypatch.setitem(sources.SOURCES._items, "test_episode_bad",
                      sources.Source(src.task, src.dataset, src.splits, extract, True))
  ev = _ev(source="test_episode_bad")
  episodes, skipped = E.load_episodes(env, ev, E.item_format(ev), "validation", 3, 0, ITEMS)
  from metalm_jax.data import pipeline
  records = pipeline.data_source(env.config.data, "test_episode_bad", "validation")
  ids = [int(records[i]["id"]) for i in range(len(records))]
  usable = [i for i in range(len(records)) if ids[i] % 2][:3]
  assert [ep[0].index for ep in episodes] == usable
  assert skipped == usable[-1] + 1 - 3 > 0
  assert all(e.index == ep[0].index for ep in episodes for e in ep)


def _rank64(env, model, batch_prompts, words):
  """Index of the most likely word per prompt (each word's tokens then eos),
  from float64 log-softmax of one full forward pass per (prompt, word) row."""
  tok = env.tokenizer
  rows, spans = [], []
  for parts in batch_prompts:
    row = P.build_batch([parts], tok, model.cfg)
    for w in words:
      cand = tok.encode(w) + [tok.eos]
      rows.append(append_tokens(row, cand, tok.pad))
      spans.append((row["tokens"].shape[1], cand))
  width = max(r["tokens"].shape[1] for r in rows)
  keys = ("tokens", "targets", "loss_mask", "segment_ids", "positions", "dock_index", "dock_mask")
  pad = lambda x: np.concatenate([x, np.zeros((1, width - x.shape[1]), x.dtype)], 1)
  batch = {k: np.concatenate([pad(r[k]) for r in rows]) for k in keys}
  batch["encoders"] = jax.tree.map(lambda *xs: np.concatenate(xs), *[r["encoders"] for r in rows])
  logits = np.asarray(jax.jit(model.apply)({"params": env.params},
                                           jax.tree.map(jnp.asarray, batch)), np.float64)
  ll = []
  for lg, (n0, cand) in zip(logits, spans):
    m = lg.max(-1, keepdims=True)
    logp = lg - m - np.log(np.exp(lg - m).sum(-1, keepdims=True))
    ll.append(sum(logp[n0 - 1 + j, c] for j, c in enumerate(cand)))
  return np.asarray(ll).reshape(len(batch_prompts), len(words)).argmax(-1)


@pytest.mark.parametrize("task,shots", [("image", None), ("text", (0, 4))])
def test_evaluator_ranks_names_against_float64_likelihoods(env, registered, task, shots):
  kw = {} if shots is None else {"shots": shots}
  ev = _ev(source=f"test_episode_{task}", num_examples=3, batch_size=3, bucket=96, **kw)
  res, rows = E.EVALUATORS.get("episode")(env, ev)
  shots = shots or (0, 1, 2, 4)  # the type's default
  fmt = E.item_format(ev)
  episodes, _ = E.load_episodes(env, ev, fmt, "validation", 3, 0, ITEMS)
  assert res["examples"] == len(rows) == 3 and res["chance"] == pytest.approx(1 / len(NAMES))
  assert [r["index"] for r in rows] == [ep[0].index for ep in episodes]
  for k in shots:
    batch_prompts = E.episode_prompts(episodes, k, env.tokenizer)
    want = _rank64(env, E.model_for(env.model, batch_prompts), batch_prompts, NAMES)
    preds = [NAMES[i] for i in want]
    labels = [_want_labels(r["index"])[-1] for r in rows]
    assert [r[f"k{k}"]["prediction"] for r in rows] == preds
    assert [r[f"k{k}"]["label"] for r in rows] == labels
    ok = [float(p == y) for p, y in zip(preds, labels)]
    assert [r[f"k{k}"]["score"] for r in rows] == ok
    assert res[f"k{k}/accuracy"] == pytest.approx(np.mean(ok), abs=1e-12)
    top = collections.Counter(preds).most_common(1)[0][1]
    assert res[f"k{k}/majority_share"] == pytest.approx(top / 3, abs=1e-12)
    shown = rows[0][f"k{k}"]["prompt"]
    assert shown.count(f"{PROMPT} ") == k and shown.endswith(PROMPT)
    assert shown.count("</s>") == k
    docked = [p for e in episodes[0][:k] + [episodes[0][-1]] for p in e.parts
              if isinstance(p, (P.Image, P.EncodedText))]  # a long text fills two items
    assert len(docked) >= k + 1
    assert shown.count("<image>" if task == "image" else "[") == len(docked)


def test_configuration_errors(env, registered):
  assert E.defaults("episode")["shots"] == (0, 1, 2, 4)
  with pytest.raises(ValueError, match="source 'world_vqa' has task 'vqa', which "
                                       "formats.EPISODE_ITEM_FORMATS"):
    E.EVALUATORS.get("episode")(env, _ev(source="world_vqa"))
  with pytest.raises(ValueError, match="item format 'vqa' has no label words"):
    E.EVALUATORS.get("episode")(env, _ev(source="test_episode_image", format="vqa"))
  with pytest.raises(ValueError, match="record 0 of test_episode_image/validation has 5 items; "
                                       "shots up to 5 need 6"):
    E.EVALUATORS.get("episode")(env, _ev(source="test_episode_image", shots=(0, 5)))
  with pytest.raises(ValueError, match="shots=\\[-1\\] must be non-negative"):
    E.EVALUATORS.get("episode")(env, _ev(source="test_episode_image", shots=(-1,)))
