"""The data behind the claims' measurements (docs/claims.md), on the test
world: the zero-shot pretraining mixture never shows a VQA or caption prompt;
the language and multitask sources of the NLI-held-out setup never show an
NLI example, template or label answer (each check also finds the leak where
there is one); binding episodes laid out as in-context prompts; the text
clusters' answers follow the scene."""
import copy
import json
import re

import numpy as np
import pytest

from metalm_jax import batch as batch_lib
from metalm_jax.data import formats, pipeline, prepare, sources, tasks, world
from metalm_jax.models import modalities
from tests import world_config as testing
from metalm_jax.data.builders.common import as_str
from metalm_jax.evaluate import prompts

RECORDS = 64  # the test world's train split


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  cfg = testing.test_config("vl", "tiny", str(tmp_path_factory.mktemp("tfds")), seq_len=256)
  cfg.model.encoders.vision.max_items = 5  # an episode's five pictures
  cfg.model.encoders.text.max_items = 5    # or its five phrases
  return cfg, prepare.load_tokenizer(cfg)


def _texts(cfg, tok, source, n=RECORDS):
  """The decoder text of the first n pretraining / tuning rows of `source`
  (tokens, docked text included, images and special ids left out)."""
  ctx = pipeline.make_context(cfg, tok)
  recs = pipeline.data_source(cfg.data, source, "train")
  prep = tasks.PrepareExample(ctx, source, 0, 0)
  special = {tok.bos, tok.eod, tok.eop, tok.pad, tok.image_start, tok.image_end}
  out = []
  for i in range(n):
    got = prep(i, recs[i])
    assert got["ok"], (source, i)
    ids = (np.concatenate(got["sentences"]) if "sentences" in got
           else got["row"]["tokens"][got["row"]["segment_ids"] > 0])
    out.append(tok.decode([int(t) for t in ids if t not in special]))
  return out


def _pattern(template):
  """A template with its fields removed, as a regex of its pieces in order."""
  pieces = [p.strip() for p in re.split(r"\{\w+\}", template) if p.strip()]
  return re.compile(r".*?".join(re.escape(p) for p in pieces), re.I | re.S)


ZERO_SHOT_LEAKS = [_pattern(t) for t in formats.VQA_TEMPLATES + formats.CAPTION_TEMPLATES
                   + (formats.CAPTION_PROMPT,)] + [re.compile(p, re.I | re.S) for p in (
                       r"question:.*answer:", r"answer briefly", r"look at the picture",
                       r"summarize this image", r"caption:", r"describe the picture")]


def _leaks(texts, patterns):
  return [(p.pattern, t) for t in texts for p in patterns if p.search(t)]


def test_zero_shot_leak(setup):
  """The zero-shot VL pretraining mixture (sources.ZERO_SHOT_VL_SOURCES), with
  the claims' caption contexts, has no VQA template and no caption prompt in
  any row; the same check finds them in world_instructions and
  world_interleaved rows."""
  from configs.experiments import claims as protocol
  cfg, tok = setup
  cfg = copy.deepcopy(cfg)
  cfg.data.caption_contexts = list(protocol.CAPTION_CONTEXTS)
  assert protocol.get_config("stage=vl_pretrain").data.caption_contexts == cfg.data.caption_contexts
  assert set(sources.ZERO_SHOT_VL_SOURCES) == {"world_caption", "world_text", "world_bind"}
  for source in sources.ZERO_SHOT_VL_SOURCES:
    texts = _texts(cfg, tok, source)
    found = _leaks(texts, ZERO_SHOT_LEAKS)
    assert all(texts) and not found, (source, found[:3])
  for source in ("world_instructions", "world_interleaved"):
    assert len(_leaks(_texts(cfg, tok, source, 16), ZERO_SHOT_LEAKS)) >= 8, source


_COLOR = "|".join(world.COLORS)
_SHAPE = "|".join(world.SHAPES)
NLI_LEAKS = [_pattern(t) for t in formats.NLI_TEMPLATES] + [re.compile(p, re.I) for p in (
    r"the picture shows", rf"\bthere is (a|no) ({_COLOR}) ({_SHAPE})\.",
    rf"\bthe (small|large) ({_SHAPE}) is ({_COLOR})\.", r"true, false or neither",
    r"does it follow", r"hypothesis:", r"answer[^.?]*?:\s*(true|false|neither)\b",
    r"the answer is (true|false|neither)\b")]


def test_heldout_cluster_clean(setup):
  """The language pretraining sources (sources.LANGUAGE_SOURCES, with and
  without a text encoder) and the multitask tuning clusters
  (sources.MULTITASK_SOURCES) hold no NLI premise or hypothesis, no NLI
  template and no label word as an answer; the check finds them in
  world_nli_instruct rows."""
  cfg, tok = setup
  assert set(sources.LANGUAGE_SOURCES) == {"world_text", "world_bind_text"}
  assert set(sources.MULTITASK_SOURCES) == {"world_text_qa", "world_count", "world_attribute"}
  gpt = copy.deepcopy(cfg)
  gpt.data.spans.encoder = ""
  for c in (cfg, gpt):
    for source in sources.LANGUAGE_SOURCES + sources.MULTITASK_SOURCES:
      texts = _texts(c, tok, source)
      found = _leaks(texts, NLI_LEAKS)
      assert all(texts) and not found, (source, found[:3])
  recs = pipeline.data_source(cfg.data, "world_text_qa", "train")
  for source in sources.MULTITASK_SOURCES:
    src = sources.SOURCES.get(source)
    for i in range(RECORDS):
      fields = src.extract(recs[i], np.random.default_rng(i))
      assert not set(fields["answers"]) & set(formats.NLI_WORDS), (source, fields)
  found = _leaks(_texts(cfg, tok, "world_nli_instruct", 16), NLI_LEAKS)
  assert len({t for _, t in found}) == 16, found


def _item_parts(cfg, item, kind):
  """An episode item's input parts as the in-context evaluation builds them."""
  if kind == "image":
    pixels = modalities.MODALITIES.get("image").load(item["image"], cfg.model.encoders.vision,
                                           (tuple(cfg.data.image_mean),
                                            tuple(cfg.data.image_std)), {})
    inputs = [prompts.Image(pixels)]
  else:
    inputs = [prompts.EncodedText(item["text"]) if cfg.data.spans.encoder
              else prompts.Text(item["text"])]
  return inputs + [prompts.Text(formats.BIND_PROMPT)]


@pytest.mark.parametrize("kind,encoder", [("image", "text"), ("text", "text"), ("text", "")])
def test_episode_rows_are_icl_prompts(setup, kind, encoder):
  """A row of episode_image / episode_text is, token for token, the in-context
  prompt (prompts.icl_parts) of its five items with their names: pictures on
  vision items 0-4, phrases on text items 0-4 (plain tokens with no text
  encoder, the GPT baseline); only the names and their `</s>` are trained."""
  cfg, tok = setup
  cfg = copy.deepcopy(cfg)
  cfg.data.spans.encoder = encoder
  source = {"image": "world_bind", "text": "world_bind_text"}[kind]
  src = sources.SOURCES.get(source)
  assert formats.EPISODE_ITEM_FORMATS[src.task] == f"bind_{kind}"
  recs = pipeline.data_source(cfg.data, source, "train")
  ctx = pipeline.make_context(cfg, tok)
  for i in range(6):
    fields = src.extract(recs[i], np.random.default_rng(i))
    items = fields["items"]
    assert len(items) == 5
    stats = tasks.new_stats()
    out = tasks.TASKS.get(src.task)(ctx, copy.deepcopy(fields), np.random.default_rng(i), stats)
    assert out["ok"] and stats["truncated_text"] == 0
    row = out["row"]
    names = [formats.BIND_NAMES[it["label"]] for it in items]
    parts = prompts.icl_parts([(_item_parts(cfg, it, kind), n) for it, n in zip(items, names)],
                              [], tok)
    b = prompts.build_batch([parts], tok, cfg.model)
    real = int((row["segment_ids"] > 0).sum())
    assert b["tokens"].shape[1] == real
    for key in ("tokens", "dock_mask", "dock_index", "positions"):
      np.testing.assert_array_equal(b[key][0], row[key][:real], err_msg=key)
    for enc, arrays in b["encoders"].items():
      for key, x in arrays.items():
        np.testing.assert_allclose(x[0], row["encoders"][enc][key], atol=1e-6, err_msg=key)
    docked = {"image": "vision", "text": encoder}[kind]
    if docked:
      offset = batch_lib.dock_offsets(cfg.model.encoders)[docked]
      slot = batch_lib.slot_length(cfg.model.encoders[docked])
      items_used = np.unique((row["dock_index"][row["dock_mask"]] - offset) // slot)
      np.testing.assert_array_equal(items_used, np.arange(5))
    else:
      assert not row["dock_mask"].any()
      want = [tok.bos] + sum((tok.encode(it["text"]) + tok.encode(formats.BIND_PROMPT)
                              + tok.encode(n) + [tok.eod] for it, n in zip(items, names)), [])
      np.testing.assert_array_equal(row["tokens"][:real], want)
    trained = row["targets"][row["loss_mask"] > 0]
    np.testing.assert_array_equal(trained, sum((tok.encode(n) + [tok.eod] for n in names), []))


def test_episode_rows_stop_at_the_encoders_items(setup):
  """With room for two pictures, a row holds the first two items (the
  demonstrations of both names); the rest is counted as truncated."""
  cfg, tok = setup
  cfg = copy.deepcopy(cfg)
  cfg.model.encoders.vision.max_items = 2
  src = sources.SOURCES.get("world_bind")
  fields = src.extract(pipeline.data_source(cfg.data, "world_bind", "train")[0], None)
  stats = tasks.new_stats()
  out = tasks.TASKS.get("episode_image")(pipeline.make_context(cfg, tok), fields, None, stats)
  assert out["ok"] and stats["truncated_text"] == 1
  assert out["row"]["encoders"]["vision"]["valid"].sum() == 2
  assert sum(out["row"]["targets"][out["row"]["loss_mask"] > 0] == tok.eod) == 2


def _relation(a, b):
  dx, dy = a["x"] - b["x"], a["y"] - b["y"]
  if abs(dx) >= abs(dy):
    return "to the left of" if dx < 0 else "to the right of"
  return "above" if dy < 0 else "below"


def _answer(question, objs):
  """The answer re-derived from the scene's objects (JSON dicts)."""
  one = lambda seq: seq[0] if len(seq) == 1 else pytest.fail(f"ambiguous: {question} {objs}")
  if m := re.fullmatch(r"what color is the (\w+)\?", question):
    return one([o["color"] for o in objs if o["shape"] == m[1]])
  if m := re.fullmatch(r"what shape is the (\w+) object\?", question):
    return one([o["shape"] for o in objs if o["color"] == m[1]])
  if m := re.fullmatch(r"(?:what size is|is|how big is) the (\w+) (\w+)(?: large or small)?\?",
                       question):
    return one([o["size"] for o in objs if (o["color"], o["shape"]) == (m[1], m[2])])
  if m := re.fullmatch(r"which object is (.+) the (\w+) (\w+)\?", question):
    b = one([o for o in objs if (o["color"], o["shape"]) == (m[2], m[3])])
    return {f"{o['color']} {o['shape']}" for o in objs if o is not b and _relation(o, b) == m[1]}
  if question == "how many objects are there?":
    return str(len(objs))
  if m := re.fullmatch(r"how many (\w+) shapes are there\?", question):
    return str(sum(m[1] in (o["color"], o["size"]) for o in objs))
  m = re.fullmatch(r"how many (\w+) are there\?", question)
  assert m, question
  return str(sum(m[1] in (o["shape"] + "s", o["shape"] + "es") for o in objs))


def test_text_clusters_answer_from_the_scene(setup):
  """Every answer of world_text_qa / world_count / world_attribute is the
  scene's (re-derived from the objects JSON); colour, shape, size and
  relation answers are read off the context; each cluster has several
  question forms, and its rows train exactly the answer and `</s>`."""
  cfg, tok = setup
  recs = pipeline.data_source(cfg.data, "world_text_qa", "train")
  ctx = pipeline.make_context(cfg, tok)
  for source in sources.MULTITASK_SOURCES:
    src = sources.SOURCES.get(source)
    assert src.task == "text_qa"
    forms = set()
    for i in range(RECORDS):
      objs = json.loads(as_str(recs[i]["objects"]))
      for k in range(3):
        fields = src.extract(recs[i], np.random.default_rng([i, k]))
        q, (a,) = fields["question"], fields["answers"]
        truth = _answer(q, objs)
        assert a in truth if isinstance(truth, set) else a == truth, (source, q, a, truth)
        if not a.isdigit():
          assert a in fields["context"], (source, fields)
        forms.add(re.sub(r"\b(" + "|".join(list(world.COLORS) + list(world.SHAPES)) + r")\b",
                         "_", q))
        row = tasks.TASKS.get("text_qa")(ctx, copy.deepcopy(fields), np.random.default_rng(k),
                                        tasks.new_stats())["row"]
        np.testing.assert_array_equal(row["targets"][row["loss_mask"] > 0],
                                      tok.encode(a) + [tok.eod])
    assert len(forms) >= 3, (source, forms)


def test_episode_phrases_docked_with_the_configured_chance(setup):
  """data.spans.episode_docked: 1 docks every phrase of a text episode (the
  evaluation layout), 0 none (plain tokens, as the GPT reads them), 0.5 some
  of each; the names are trained either way and nothing else is."""
  cfg, tok = setup
  src = sources.SOURCES.get("world_bind_text")
  recs = pipeline.data_source(cfg.data, "world_bind_text", "train")
  counts = {}
  for chance in (1.0, 0.0, 0.5):
    c = copy.deepcopy(cfg)
    c.data.spans.episode_docked = chance
    ctx = pipeline.make_context(c, tok)
    docked = []
    for i in range(16):
      fields = src.extract(recs[i], np.random.default_rng(i))
      out = tasks.TASKS.get("episode_text")(ctx, fields, np.random.default_rng([7, i]),
                                            tasks.new_stats())
      row = out["row"]
      docked.append(int(row["encoders"]["text"]["mask"].any(-1).sum()))
      real = row["segment_ids"] > 0
      trained = row["targets"][row["loss_mask"] > 0]
      assert sum(trained == tok.eod) == 5 and len(trained) == 10  # 5 names + their </s>
      if chance == 0.0:  # every phrase is in the decoder's tokens
        text = tok.decode([int(t) for t in row["tokens"][real]])
        for phrase in fields["items"]:
          assert phrase["text"].rstrip(".") in text
    counts[chance] = docked
  assert counts[1.0] == [5] * 16 and counts[0.0] == [0] * 16
  assert 0 < sum(counts[0.5]) < 5 * 16 and len(set(counts[0.5])) > 1


def test_caption_contexts_sit_between_image_and_caption_untrained(setup):
  """data.caption_contexts: one drawn per caption row, after </image> as
  plain untrained tokens, then the caption (trained); none by default."""
  cfg, tok = setup
  recs = pipeline.data_source(cfg.data, "world_caption", "train")
  src = sources.SOURCES.get("world_caption")
  c = copy.deepcopy(cfg)
  c.data.spans.prefix_max = 0
  c.data.caption_contexts = ["from the album:", "seen today:"]
  seen = set()
  for i in range(12):
    fields = src.extract(recs[i], None)
    plain = tasks.TASKS.get("caption")(pipeline.make_context(
        copy.deepcopy(cfg), tok), copy.deepcopy(fields), np.random.default_rng(i),
        tasks.new_stats())["row"]
    row = tasks.TASKS.get("caption")(pipeline.make_context(c, tok), copy.deepcopy(fields),
                                     np.random.default_rng(i), tasks.new_stats())["row"]
    toks = [int(t) for t in row["tokens"][row["segment_ids"] > 0]]
    end = toks.index(tok.image_end)
    context = [t for t, m in zip(toks[end + 1:], row["loss_mask"][end:]) if m == 0]
    text = tok.decode(context)
    assert text in c.data.caption_contexts, text
    seen.add(text)
    # the caption after it is a caption of the record, trained to its </s>
    caption = tok.decode(toks[end + 1 + len(context):])
    assert any(caption.strip().startswith(x.split()[0]) for x in fields["captions"]), caption
    assert int(row["loss_mask"].sum()) >= 2 and int(plain["loss_mask"].sum()) >= 2
  assert seen == set(c.data.caption_contexts)
