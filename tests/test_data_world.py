"""The embedded world: determinism, held-out split, labels that follow from
the scene, rendering, documents that use the prompt words but hold no
prompt, binding episodes, and the TFDS builder reading back what it wrote."""
import io
import json
import re

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from metalm_jax.data import world, world_av
from metalm_jax.data.builders.common import as_str


def test_scene_records_are_deterministic():
  a = world.scene_record(3, "train", 17, 64, 3)
  b = world.scene_record(3, "train", 17, 64, 3)
  for k in a:
    np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]))
  others = [world.make_scene(4, "train", 17), world.make_scene(3, "validation", 17),
            world.make_scene(3, "train", 18)]
  assert all(o != world.make_scene(3, "train", 17) for o in others)


def test_heldout_pairs_only_in_heldout_split():
  held = set(world.heldout_pairs())
  assert len(held) == len(world.SHAPES)
  seen = set()
  for split, n in (("train", 400), ("validation", 100)):
    for i in range(n):
      pairs = {(o.color, o.shape) for o in world.make_scene(0, split, i)}
      assert not pairs & held, (split, i, pairs & held)
      seen |= pairs
  # Every other combination is learnable from the training scenes.
  all_pairs = {(c, s) for c in world.COLORS for s in world.SHAPES}
  assert seen == all_pairs - held
  for i in range(100):
    objs = world.make_scene(0, "test_heldout", i)
    assert {(o.color, o.shape) for o in objs} & held
    assert 1 <= len(objs) <= 4


def _truth(q, objs):
  """Independent answer to a generated question, from the objects."""
  m = re.fullmatch(r"what color is the (\w+)\?", q)
  if m:
    return [o.color for o in objs if o.shape == m[1]][0]
  m = re.fullmatch(r"what shape is the (\w+) object\?", q)
  if m:
    return [o.shape for o in objs if o.color == m[1]][0]
  if q == "how many objects are there?":
    return str(len(objs))
  m = re.fullmatch(r"is there a (\w+) (\w+)\?", q)
  if m:
    return "yes" if any((o.color, o.shape) == (m[1], m[2]) for o in objs) else "no"
  m = re.fullmatch(r"is the (\w+) (\w+) (.+) the (\w+) (\w+)\?", q)
  a = [o for o in objs if (o.color, o.shape) == (m[1], m[2])][0]
  b = [o for o in objs if (o.color, o.shape) == (m[4], m[5])][0]
  dx, dy = a.x - b.x, a.y - b.y
  rel = (("to the left of" if dx < 0 else "to the right of") if abs(dx) >= abs(dy)
         else ("above" if dy < 0 else "below"))
  return "yes" if rel == m[3] else "no"


def test_vqa_answers_follow_the_scene():
  types = set()
  for i in range(150):
    objs = world.make_scene(1, "train", i)
    r = world.scene_record(1, "train", i, 32, 2)
    assert r["answers"].shape == (len(r["questions"]), 10)
    for q, t, ans in zip(r["questions"], r["question_types"], r["answers"]):
      types.add(t)
      truth = _truth(q, objs)
      assert sum(a == truth for a in ans) >= 7, (q, truth, ans)  # at most 3 noisy
  assert types == {"color", "shape", "count", "yes/no", "spatial"}


def _judge_nli(premise: str, hypothesis: str) -> str:
  """The label read off the two texts alone (the generator's rules, restated)."""
  only = premise.startswith("the picture shows only ")
  named = re.findall(r"(small|large) (\w+) (\w+)", premise)
  pairs = {(c, sh) for _, c, sh in named}
  if m := re.fullmatch(r"there is a (\w+) (\w+)\.", hypothesis):
    return "entailment" if (m[1], m[2]) in pairs else "contradiction" if only else "neutral"
  if m := re.fullmatch(r"there is no (\w+) (\w+)\.", hypothesis):
    return "contradiction" if (m[1], m[2]) in pairs else "entailment" if only else "neutral"
  m = re.fullmatch(r"the (small|large) (\w+) is (\w+)\.", hypothesis)
  assert m, hypothesis
  colours = [c for z, c, sh in named if (z, sh) == (m[1], m[2])]
  assert len(colours) <= 1 and not (only and not colours), (premise, hypothesis)
  return "neutral" if not colours else "entailment" if colours[0] == m[3] else "contradiction"


def test_nli_labels_follow_premise_and_hypothesis():
  counts = {}  # (hypothesis template, premise says "only") -> label counts
  for i in range(600):
    objs = world.make_scene(2, "train", i)
    r = world.scene_record(2, "train", i, 32, 2)
    label = world.NLI_LABELS[r["label"]]
    named = set(re.findall(r"(small|large) (\w+) (\w+)", r["premise"]))
    scene = {(o.size, o.color, o.shape) for o in objs}
    assert named <= scene
    only = r["premise"].startswith("the picture shows only ")
    if only:
      assert named == scene, r["premise"]
    assert _judge_nli(r["premise"], r["hypothesis"]) == label, (r["premise"], r["hypothesis"])
    key = (r["hypothesis"].split()[2 if r["hypothesis"].startswith("there") else 0], only)
    counts.setdefault(key, {}).setdefault(label, 0)
    counts[key][label] += 1
  # every template carries every label; the template (and "only") alone
  # predict the label no better than half the time (the old world: always)
  for template in ("a", "no", "the"):
    assert {lab for (t, _), c in counts.items() if t == template for lab in c} == \
        set(world.NLI_LABELS), template
  best = sum(max(c.values()) for c in counts.values()) / 600
  assert best < 0.56, (best, counts)


def test_render_draws_each_object_in_its_colour():
  for i in range(30):
    objs = world.make_scene(0, "train", i)
    img = world.render(objs, 64)
    assert img.shape == (64, 64, 3) and img.dtype == np.uint8
    for k, o in enumerate(objs):
      px = tuple(int(v) for v in img[int(o.y * 64), int(o.x * 64)])
      assert px != world.BACKGROUND
      if k == len(objs) - 1:  # drawn last: nothing covers it
        assert px == world.COLORS[o.color]


def test_documents_have_paragraphs_of_sentences():
  doc = world.scene_record(0, "train", 5, 32, 4)["document"]
  paras = doc.split("\n\n")
  assert len(paras) == 4
  assert all(p.endswith(".") for p in paras)


def test_builder_writes_and_reads_back(tmp_path):
  from metalm_jax.data.builders import world as world_builder
  b = world_builder.MetalmWorld(config="test", data_dir=str(tmp_path), file_format="array_record")
  b.download_and_prepare()
  ds = tfds.data_source("metalm_world/test", data_dir=str(tmp_path))
  assert {k: len(v) for k, v in ds.items()} == {"train": 64, "validation": 16, "test_heldout": 16}
  got = ds["test_heldout"][5]
  want = world.scene_record(0, "test_heldout", got["id"], 64, 3)
  assert got["image"] == want["image"]
  assert [as_str(c) for c in got["captions"]] == want["captions"]
  assert np.array_equal(np.vectorize(as_str)(got["answers"]), want["answers"].astype(str))
  assert as_str(got["document"]) == want["document"] and got["label"] == want["label"]
  doc = world.interleaved(0, "test_heldout", got["id"], 16, 4, 64)
  np.testing.assert_array_equal(got["doc_ids"], doc["doc_ids"])
  assert list(got["doc_images"]) == list(doc["doc_images"])
  assert [as_str(q) for q in got["doc_questions"]] == doc["doc_questions"]
  av = world_av.av_record(0, "test_heldout", got["id"], 64)
  assert got["audio"] == av["audio"] and list(got["video"]) == list(av["video"])
  for k in ("audio_captions", "audio_questions", "video_captions", "video_questions"):
    assert [as_str(t) for t in got[k]] == av[k], k
  for k in ("audio_answers", "video_answers"):
    assert np.array_equal(np.vectorize(as_str)(got[k]), av[k].astype(str)), k
  assert json.loads(as_str(got["video_event"])) == json.loads(av["video_event"])
  bind = world.bind_episode(0, "test_heldout", got["id"], 64)
  assert list(got["bind_images"]) == list(bind["bind_images"])
  assert [as_str(p) for p in got["bind_phrases"]] == bind["bind_phrases"]
  np.testing.assert_array_equal(got["bind_labels"], bind["bind_labels"])
  _interleaved_docs_keep_heldout_unseen(ds)


def _interleaved_docs_keep_heldout_unseen(ds):
  """No interleaved document of train or validation shows a held-out image or
  colour-shape pair, and no train document shows a validation image."""
  held = set(world.heldout_pairs())
  images = {split: {bytes(r["image"]) for r in ds[split]} for split in ds}
  for split, unseen in (("train", ("validation", "test_heldout")),
                        ("validation", ("test_heldout",))):
    for r in ds[split]:
      assert len(r["doc_images"]) == 4 and r["doc_ids"][0] == r["id"]
      for j, img in zip(r["doc_ids"], r["doc_images"]):
        assert all(bytes(img) not in images[u] for u in unseen), (split, r["id"], j)
        assert bytes(img) in images[split]  # a scene of its own split
        assert not {(o.color, o.shape) for o in world.make_scene(0, split, int(j))} & held


def test_interleaved_documents_are_deterministic_scenes_of_their_split():
  a = world.interleaved(3, "train", 7, 500, 4, 32)
  b = world.interleaved(3, "train", 7, 500, 4, 32)
  for k in a:
    np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]))
  assert a["doc_ids"][0] == 7 and len(set(a["doc_ids"])) == 4 and max(a["doc_ids"]) < 500
  assert not np.array_equal(a["doc_ids"], world.interleaved(4, "train", 7, 500, 4, 32)["doc_ids"])
  held = set(world.heldout_pairs())
  for i in range(100):  # train documents over a large split: never a held-out pair
    d = world.interleaved(0, "train", i, 3000, 4, 16)
    for j, img, caps, q, ans in zip(d["doc_ids"], d["doc_images"], d["doc_captions"],
                                   d["doc_questions"], d["doc_answers"]):
      r = world.scene_record(0, "train", int(j), 16, 1)
      assert img == r["image"] and list(caps) == r["captions"] and q in r["questions"]
      np.testing.assert_array_equal(ans, r["answers"][r["questions"].index(q)])
      assert not {(o.color, o.shape) for o in world.make_scene(0, "train", int(j))} & held
  with pytest.raises(ValueError, match="index=9"):
    world.interleaved(0, "train", 9, 5, 2, 16)


# ---------------------------------------------------------------- world 1.4.0
PROMPT_WORDS = ("true", "false", "neither", "question", "answer", "only")
# Written out here, not taken from formats.py: every prompt of a format with
# its fields removed, and the NLI premise.
NOT_IN_DOCUMENTS = [re.compile(p) for p in (
    r"true, false or neither", r"true or false", r"question:", r"answer:", r"answer briefly",
    r"look at the picture", r"summarize this image", r"caption:", r"describe (the|this)",
    r"hypothesis:", r"statement:", r"does it follow", r"this is a", r"the picture shows")]


def _sentence_is_true(s, objs):
  """A sentence with a prompt word, checked against the scene (None: no known form)."""
  has = lambda c, sh: [o for o in objs if (o.color, o.shape) == (c, sh)]
  if m := re.fullmatch(r"it is true that the (\w+) (\w+) is (small|large)\.", s):
    return [o.size for o in has(m[1], m[2])] == [m[3]]
  if m := re.fullmatch(r"it is false that the scene has a (\w+) (\w+)\.", s):
    return not has(m[1], m[2]) and (m[1], m[2]) not in world.heldout_pairs()
  if m := re.fullmatch(r"the (\w+) is neither (\w+) nor (\w+)\.", s):
    return len(objs) == 1 and objs[0].shape == m[1] and objs[0].color not in (m[2], m[3])
  if m := re.fullmatch(r"neither the (\w+) (\w+) nor the (\w+) (\w+) is (\w+)\.", s):
    return bool(has(m[1], m[2]) and has(m[3], m[4])) and m[5] not in (m[1], m[3])
  if m := re.fullmatch(r"only (\w+) of the shapes (is|are) (\w+)\.", s):
    k = sum(o.color == m[3] for o in objs)
    return k >= 1 and m[1] == world.NUMBER_WORDS[k] and (m[2] == "is") == (k == 1)
  if m := re.fullmatch(r"if you ask what color the (\w+) is, the answer is (\w+)\.", s):
    return [o.color for o in objs if o.shape == m[1]] == [m[2]]
  if m := re.fullmatch(r"a question about the number of shapes has the answer (\w+)\.", s):
    return m[1] == world.NUMBER_WORDS[len(objs)]
  return None


def test_documents_use_prompt_words_in_true_sentences_but_no_prompt():
  """Documents hold true, false, neither, question, answer and only (each in
  some documents), every such sentence true of the scene, and never a prompt
  of a format (fields removed) nor an NLI premise."""
  seen = dict.fromkeys(PROMPT_WORDS, 0)
  for i in range(200):
    objs = world.make_scene(0, "train", i)
    doc = world.scene_record(0, "train", i, 16, 3)["document"]
    for p in NOT_IN_DOCUMENTS:
      assert not p.search(doc), (p.pattern, doc)
    for s in re.split(r"(?<=\.)\s+", doc.replace("\n\n", " ")):
      words = set(re.findall(r"\w+", s)) & set(PROMPT_WORDS)
      for w in words:
        seen[w] += 1
      if words:
        assert _sentence_is_true(s, objs), (s, objs)
  assert all(k >= 20 for k in seen.values()), seen


def test_binding_episodes():
  """Deterministic; two shapes under two names drawn per episode (several
  pairs over 100 episodes); items 0 and 1 show both; every item's name is its
  shape's, so the query's is that of the demonstrations of its shape; the
  phrase and picture show the one object; held-out pairs only in
  test_heldout, where the query is one."""
  a, b = world.bind_episode(3, "train", 7, 32), world.bind_episode(3, "train", 7, 32)
  for k in a:
    np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]))
  assert a["bind_phrases"] != world.bind_episode(3, "train", 8, 32)["bind_phrases"]
  held = set(world.heldout_pairs())
  pairs, query_cats = set(), []
  for split in ("train", "validation", "test_heldout"):
    for i in range(100):
      e = world.bind_episode(0, split, i, 32)
      assert len(e["bind_images"]) == len(e["bind_phrases"]) == len(e["bind_labels"]) == 5
      objs = []
      for img, phrase in zip(e["bind_images"], e["bind_phrases"]):
        m = re.fullmatch(r"a (small|large) (\w+) (\w+)\.", phrase)
        assert m and m[2] in world.COLORS and m[3] in world.SHAPES, phrase
        objs.append((m[2], m[3]))
        px = np.asarray(Image.open(io.BytesIO(img)).convert("RGB"))
        colours = {tuple(int(v) for v in p) for p in px.reshape(-1, 3)} - {world.BACKGROUND}
        assert colours == {world.COLORS[m[2]]}, (phrase, colours)
      shapes = [s for _, s in objs]
      names = [world.BIND_NAMES[int(k)] for k in e["bind_labels"]]
      name_of = dict(zip(shapes, names))
      assert len(name_of) == 2 and len(set(name_of.values())) == 2, (shapes, names)
      assert [name_of[s] for s in shapes] == names  # one name per shape
      assert set(shapes[:2]) == set(shapes)  # the first two show both
      assert names[4] in names[:4]
      pairs.add(tuple(sorted(name_of.values())))
      query_cats.append(shapes[4] == shapes[0])
      if split == "test_heldout":
        assert objs[4] in held
      else:
        assert not set(objs) & held, (split, i, objs)
  assert len(pairs) >= 10, pairs
  assert 0.35 < np.mean(query_cats) < 0.65  # the query's shape is drawn
