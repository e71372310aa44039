"""The format-agreement test: for every task format (data/formats.py), the
training row the pipeline's task builds for a record and the evaluation
prompt the evaluators build for the same fields agree token for token on the
prompt part (tokens, docking, encoder inputs), and what the row trains after
the prompt is the evaluation's answer followed by </s>. Real records of the
test world, and hand-made ones whose premise overflows the text encoder (cut
and split at the same token boundaries on both sides)."""
import copy

import numpy as np
import pytest

from metalm_jax import batch as batch_lib
from metalm_jax.data import formats, pipeline, sources, tasks
from tests import world_config as testing
from tests.eval_fixtures import assert_row_matches_prompt, eval_env
from metalm_jax.data import prepare
from metalm_jax.evaluate import evaluators as E
from metalm_jax.evaluate import prompts

SOURCE = {"caption": "world_caption", "caption_prompted": "world_caption_prompted",
          "caption_instruct": "world_caption_instruct", "vqa": "world_vqa",
          "vqa_instruct": "world_vqa_instruct", "nli": "world_nli",
          "nli_instruct": "world_nli_instruct", "nli_encoded": "world_nli_encoded",
          "pair": "world_pair"}
RECORDS = 6
LONG = ("the red circle is to the left of the blue square and the green triangle is above "
        "the yellow star while the purple circle sits below the orange square and the small "
        "blue triangle is next to the big red square near the left edge of the picture")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
  cfg = testing.test_config("vl", "tiny", str(tmp_path_factory.mktemp("tfds")), seq_len=128)
  cfg.model.encoders.vision.max_items = 2  # pair: two images
  cfg.model.encoders.text.max_items = 2    # nli: a long premise over two items
  return cfg, prepare.load_tokenizer(cfg)


@pytest.mark.parametrize("name", sorted(SOURCE))
def test_training_rows_and_evaluation_prompts_agree(world, name):
  cfg, tok = world
  src = sources.SOURCES.get(SOURCE[name])
  assert src.task == name
  recs = pipeline.data_source(cfg.data, SOURCE[name], "train")
  for i in range(RECORDS):
    fields = src.extract(recs[i], np.random.default_rng([0, 0, i]))
    assert_row_matches_prompt(cfg, tok, name, fields, i)
  # Without a `prompt`, evaluators use the format's evaluation template.
  fmt = formats.FORMATS.get(name)
  ex = E.make_example(fmt, fields, eval_env(cfg, tok), E.resolve(dict(type="vqa")))
  want = formats.CAPTION_PROMPT if name == "caption" else fmt.templates[0]
  assert ex.parts[-1].text == fmt.prompt(fmt.parse(fields)[0], want)


@pytest.mark.parametrize("name,encoder", [("nli", "text"), ("nli", ""), ("nli_instruct", "text"),
                                          ("nli_encoded", "text")])
def test_long_premise_is_cut_and_split_alike(world, name, encoder):
  """A premise longer than one text-encoder item: training splits it at
  token boundaries over the encoder's items (or keeps it as plain tokens
  without a text encoder); the evaluation prompt is the same."""
  cfg, tok = world
  cfg = copy.deepcopy(cfg)
  cfg.data.spans.encoder = encoder
  cfg.data.seq_len = cfg.model.decoder.max_len  # room for the whole premise as plain tokens
  size = batch_lib.slot_length(cfg.model.encoders.text)
  assert len(tok.encode(LONG)) > 2 * size
  fields = {"premise": "  " + LONG + " ", "hypothesis": "the red circle is left", "label": 2}
  ex, row = assert_row_matches_prompt(cfg, tok, name, fields, 3)
  enc = [p for p in ex.parts if isinstance(p, prompts.EncodedText)]
  if not encoder:
    assert not enc and not row["dock_mask"].any()
  else:
    items = 1 if name == "nli_encoded" else 2
    assert [len(p.ids) for p in enc] == [size] * items  # cut to what the items hold
    assert row["encoders"]["text"]["mask"].sum() == size * items


def test_bad_fields_are_skipped_alike(world):
  """What the pipeline skips (counted) the evaluators skip too."""
  cfg, tok = world
  ctx = pipeline.make_context(cfg, tok)
  env = eval_env(cfg, tok)
  cases = [("nli", {"premise": "a b", "hypothesis": "c", "label": 7}, "skipped_bad_label"),
           ("nli", {"premise": " ", "hypothesis": "c", "label": 0}, "skipped_empty_text"),
           ("vqa", {"image": None, "question": "what?", "answers": ["", " "]},
            "skipped_empty_text"),
           ("pair", {"image_left": None, "image_right": None, "sentence": "x", "label": 2},
            "skipped_bad_label")]
  for name, fields, key in cases:
    stats = tasks.new_stats()
    out = tasks.TASKS.get(name)(ctx, fields, np.random.default_rng(0), stats)
    assert not out["ok"] and stats[key] == 1, (name, key)
    fmt = formats.FORMATS.get(name)
    assert E.make_example(fmt, fields, env, E.resolve(dict(type="vqa"))) is None


def _docked(b, r, enc_cfgs):
  """(encoder, item, element) of every docked position of row r, None elsewhere."""
  offs = batch_lib.dock_offsets(enc_cfgs)
  out = []
  for m, d in zip(b["dock_mask"][r], b["dock_index"][r]):
    name = m and max((n for n in offs if offs[n] <= d), key=lambda n: offs[n])
    t = m and batch_lib.slot_length(enc_cfgs[name])
    out.append((name, int(d - offs[name]) // t, int(d - offs[name]) % t) if m else None)
  return out


def _item_arrays(b, r, name, item):
  return {k: v[r, item] for k, v in b["encoders"][name].items()}


@pytest.mark.parametrize("name", ["vqa", "nli"])
def test_icl_demonstrations_are_training_rows(world, name):
  """An in-context prompt of 2 demonstrations and a query (prompts.icl_parts,
  as the icl evaluator builds it): each demonstration is, token for token, its
  record's training row (tasks.TASKS) without the row's `<s>`, the `</s>` after
  the answer included; demonstrations in the given order; every docked
  position (image vectors, encoded premise) of each demonstration and of the
  query is where its row / evaluation prompt docks it, on the prompt's next
  encoder items in order, with the same encoder inputs."""
  cfg, tok = world
  fmt, src = formats.FORMATS.get(name), sources.SOURCES.get(SOURCE[name])
  recs = pipeline.data_source(cfg.data, SOURCE[name], "train")
  ctx, env = pipeline.make_context(cfg, tok), eval_env(cfg, tok)
  ev = E.resolve(dict(type="icl"))
  fields = [src.extract(recs[i], np.random.default_rng([0, 0, i])) for i in range(3)]
  rows = [tasks.TASKS.get(name)(ctx, copy.deepcopy(f), np.random.default_rng([0, 0, i]),
                                tasks.new_stats())["row"] for i, f in enumerate(fields)]
  exs = [E.make_example(fmt, f, env, ev) for f in fields]
  order = [1, 0]  # demonstrations out of record order; record 2 is the query
  parts = prompts.icl_parts([(exs[i].parts, exs[i].label) for i in order], exs[2].parts, tok)
  model_cfg = E.with_max_items(env.model, E.items_needed(parts, cfg.model)).cfg
  b = prompts.build_batch([parts], tok, model_cfg)
  got = _docked(b, 0, model_cfg.encoders)
  assert b["tokens"][0, 0] == tok.bos and list(b["tokens"][0]).count(tok.bos) == 1
  query = prompts.build_batch([exs[2].parts], tok, cfg.model)
  # (tokens, docking, batch) of each piece after the prompt's one <s>.
  pieces = [(rows[i]["tokens"][1:int((rows[i]["segment_ids"] > 0).sum())],
             _docked({k: v[None] for k, v in rows[i].items() if k != "encoders"}, 0,
                     cfg.model.encoders)[1:], {"encoders": {
                         n: {k: v[None] for k, v in e.items()}
                         for n, e in rows[i]["encoders"].items()}}) for i in order]
  pieces.append((query["tokens"][0, 1:], _docked(query, 0, cfg.model.encoders)[1:], query))
  start, base = 1, {}
  for p, (toks, docked, src_b) in enumerate(pieces):
    n = len(toks)
    np.testing.assert_array_equal(b["tokens"][0, start:start + n], toks, err_msg=f"piece {p}")
    if p < 2:  # a demonstration ends with its answer, then </s>
      assert toks[-1] == tok.eod and tok.decode(toks).endswith(exs[order[p]].label)
    used = {}
    for g, d in zip(got[start:start + n], docked):
      assert (g is None) == (d is None), f"piece {p}: docked positions differ"
      if d is not None:
        enc, item, j = d
        assert g == (enc, base.get(enc, 0) + item, j), (p, g, d)
        used[enc] = max(used.get(enc, 0), item + 1)
    assert used, f"piece {p} docks nothing"
    for enc, k in used.items():  # the encoder inputs of each item moved along
      for item in range(k):
        want = _item_arrays(src_b, 0, enc, item)
        have = _item_arrays(b, 0, enc, base.get(enc, 0) + item)
        for key in want:
          np.testing.assert_allclose(have[key], want[key], atol=1e-6,
                                     err_msg=f"piece {p} {enc}.{key} item {item}")
      base[enc] = base.get(enc, 0) + k
    start += n
  assert start == b["tokens"].shape[1]  # nothing else in the prompt


def _interleaved_world(world):
  cfg, tok = world
  cfg = copy.deepcopy(cfg)
  cfg.model.encoders.vision.max_items = 4
  return cfg, tok


def test_interleaved_rows_are_icl_prompts(world):
  """A pretraining row of an interleaved document (tasks `interleaved`) is,
  token for token, the in-context prompt of its images (prompts.icl_parts
  over the evaluators' examples of the drawn format): one `<s>`, per image
  `<image>` [image on the next vision item] `</image>` prompt answer `</s>`;
  every docked position and image is the prompt's; only the answers and their
  `</s>` are trained. Both formats (vqa, caption), rows of 2+ images."""
  cfg, tok = _interleaved_world(world)
  src = sources.SOURCES.get("world_interleaved")
  recs = pipeline.data_source(cfg.data, "world_interleaved", "train")
  ctx, env = pipeline.make_context(cfg, tok), eval_env(cfg, tok)
  ev = E.resolve(dict(type="icl"))
  t = batch_lib.slot_length(cfg.model.encoders.vision)
  seen = {}
  for i in range(8):
    fields = src.extract(recs[i], np.random.default_rng([0, 0, i]))
    rng = np.random.default_rng([5, 1, i])
    name = tasks.INTERLEAVED_FORMATS[int(copy.deepcopy(rng).integers(2))]  # the row's draw
    out = tasks.TASKS.get("interleaved")(ctx, copy.deepcopy(fields), rng, tasks.new_stats())
    assert out["ok"]
    row = out["row"]
    k = int(row["encoders"]["vision"]["valid"].sum())
    seen[name] = max(seen.get(name, 0), k)
    fmt = formats.FORMATS.get(name)
    real = int((row["segment_ids"] > 0).sum())
    ends = [int(j) for j in np.flatnonzero(row["tokens"][:real] == tok.eod)]
    assert len(ends) == k
    demos, starts = [], [1] + [e + 1 for e in ends[:-1]]
    for item, (s, e) in enumerate(zip(starts, ends)):
      ex = E.make_example(fmt, fields["items"][item], env, ev)
      trained = row["tokens"][s:e + 1][row["loss_mask"][s - 1:e] > 0]
      label = [r for r in ex.refs if tok.encode(r) + [tok.eod] == list(trained)]
      assert label, (name, item, tok.decode(trained), ex.refs)
      assert name == "caption" or label[0] == ex.label  # VQA: the majority answer
      demos.append((ex.parts, label[0]))
    b = prompts.build_batch([prompts.icl_parts(demos, [], tok)], tok, cfg.model)
    assert b["tokens"].shape[1] == real
    for key in ("tokens", "dock_mask", "dock_index", "positions"):
      np.testing.assert_array_equal(b[key][0], row[key][:real], err_msg=f"{name} {key}")
    np.testing.assert_allclose(b["encoders"]["vision"]["pixels"][0][:k],
                               row["encoders"]["vision"]["pixels"][:k], atol=1e-6)
    assert b["encoders"]["vision"]["valid"][0].sum() == k
    # Image k docks its own item: dock indices run over item k's t vectors.
    docked = row["dock_index"][:real][row["dock_mask"][:real]]
    base = batch_lib.dock_offsets(cfg.model.encoders)["vision"]
    np.testing.assert_array_equal(docked, base + np.arange(k * t))
    # Trained: each answer and its </s>, nothing of the prompts or images.
    tr = np.flatnonzero(row["loss_mask"][:real])
    assert set(row["targets"][tr]) >= {tok.eod} and not row["dock_mask"][tr + 1].any()
    assert sum(row["targets"][tr] == tok.eod) == k
  assert set(seen) == {"vqa", "caption"} and min(seen.values()) >= 2, seen
  assert max(seen.values()) >= 3, seen


def test_interleaved_and_instruction_sources_are_deterministic(world):
  """Same seed -> the same rows (interleaved rows; packed instruction text);
  another seed -> other rows. Instruction text uses the formats' templates."""
  cfg, _ = _interleaved_world(world)
  for source in ("world_interleaved", "world_instructions"):
    c = copy.deepcopy(cfg)
    c.data.mixture = {source: 1.0}
    get = lambda seed, c=c: pipeline.split_stats(next(pipeline.make_iterator(
        c, "train", batch_size=4, seed=seed)))[0]
    a, b, other = get(3), get(3), get(4)
    for key in ("tokens", "dock_index", "loss_mask"):
      np.testing.assert_array_equal(a[key], b[key], err_msg=f"{source} {key}")
    np.testing.assert_array_equal(a["encoders"]["vision"]["pixels"],
                                  b["encoders"]["vision"]["pixels"])
    assert not np.array_equal(a["tokens"], other["tokens"]), source
  src = sources.SOURCES.get("world_instructions")
  recs = pipeline.data_source(cfg.data, "world_instructions", "train")
  text = src.extract(recs[0], np.random.default_rng(0))["text"]
  qs = [str(q, "utf-8") if isinstance(q, bytes) else q for q in recs[0]["questions"]]
  paras = text.split("\n\n")
  assert len(paras) == len(qs) + 1
  templates = formats.VQA_TEMPLATES + (formats.CAPTION_PROMPT,) + formats.CAPTION_TEMPLATES
  for p in paras:
    assert any(tt.split("{")[0].strip() in p for tt in templates), p
