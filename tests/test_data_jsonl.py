"""Your own data from JSONL manifests (data/builders/jsonl.py, data/manifest.py,
data/user_sets.py): a folder of test-written images with a manifest holding
each kind of bad line builds, counts and names them; the build fails past
max_bad_fraction and leaves nothing behind; a rebuild writes identical
records; the set's sources feed the pipeline; the finetune configs take
dataset=NAME."""
import json
import logging
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from configs import finetune_caption, finetune_vqa
from metalm_jax import batch as batch_lib
from metalm_jax.data import manifest, pipeline, prepare, user_sets
from metalm_jax.data import sources as sources_lib
from metalm_jax.data.builders import jsonl
from tests import world_config
from tests.your_data_fixtures import BAD, GOOD, data_cfg, write_folder

@pytest.fixture(scope="module")
def built(tmp_path_factory):
  root = tmp_path_factory.mktemp("yours")
  folder = write_folder(root / "src")
  cfg = data_cfg(root / "tfds")
  prepare.ensure_jsonl("mine", str(folder), cfg, max_bad_fraction=0.9)
  return folder, cfg


def test_bad_lines_are_counted_and_named(built):
  folder, cfg = built
  report = user_sets.report(cfg, "mine")
  bad = [(len(GOOD) + 1 + i, reason) for i, (_, reason) in enumerate(BAD) if reason]
  assert report["lines"] == len(GOOD) + len(BAD) + 4
  assert report["bad_lines"] == len(bad) == 13
  expected = {r: 0 for r in manifest.REASONS}
  for _, reason in bad:
    expected[reason] += 1
  assert report["skipped"] == expected
  assert {k: v for k, v in expected.items() if v} == {
      "malformed_json": 2, "missing_medium": 1, "unreadable_medium": 1, "undecodable_image": 1,
      "missing_target": 2, "empty_target": 2, "wrong_type": 2, "several_media": 1,
      "duplicate_key": 1}
  assert [(p["line"], p["reason"]) for p in report["problems"]] == bad
  assert {p["file"] for p in report["problems"]} == {"train.jsonl"}
  assert report["records"] == {"train_caption": 3, "train_vqa": 2, "train_text": 1,
                               "validation_caption": 4}
  assert report["kinds"] == ["caption", "text", "vqa"]
  assert user_sets.source_names(cfg, "mine") == ["mine_caption", "mine_text", "mine_vqa"]


def test_build_log_names_file_and_line(tmp_path, caplog):
  folder = write_folder(tmp_path / "src")
  with caplog.at_level(logging.WARNING):
    prepare.ensure_jsonl("logged", str(folder), data_cfg(tmp_path / "tfds"), 0.9)
  text = caplog.text
  for i, (_, reason) in enumerate(BAD):
    if reason:
      assert f"train.jsonl:{len(GOOD) + 1 + i}: {reason}" in text


def test_records_hold_media_bytes_targets_and_metadata(built):
  folder, cfg = built
  caption = pipeline.data_source(cfg, "mine_caption", "train")
  by_key = {r["key"].decode(): r for r in (caption[i] for i in range(len(caption)))}
  assert set(by_key) == {"train.jsonl:1", "both", "7"}
  first = by_key["train.jsonl:1"]
  assert first["image"] == (folder / "img" / "0.png").read_bytes()
  assert first["audio"] == b"" and first["video"] == b""
  assert json.loads(first["metadata"]) == {"licence": 3, "source": "web"}
  assert first["file"] == b"train.jsonl:1"
  assert [c.decode() for c in by_key["both"]["captions"]] == ["a blue square.", "blue."]
  vqa = pipeline.data_source(cfg, "mine_vqa", "train")
  got = sorted((vqa[i]["key"].decode(), vqa[i]["question"].decode(),
                [a.decode() for a in vqa[i]["answers"]]) for i in range(len(vqa)))
  assert got == [("both", "what color?", ["blue"]),
                 ("train.jsonl:2", "what color is it?", ["green", "green"])]
  fields = sources_lib.SOURCES.get("mine_vqa").extract(vqa[0], np.random.default_rng(0))
  assert set(fields) == {"image", "question", "answers"}
  text = pipeline.data_source(cfg, "mine_text", "train")
  assert text[0]["text"].decode() == "A first paragraph.\n\nA second one."
  val = pipeline.data_source(cfg, "mine_caption", "validation")
  assert len(val) == 4 and val[0]["image"] in {
      (folder / "img" / f"{i}.png").read_bytes() for i in range(5)}


def test_sources_of_kinds_and_splits_it_lacks_name_what_it_has(built):
  _, cfg = built
  assert sources_lib.SOURCES.get("mine_caption_prompted").task == "caption_prompted"
  assert sources_lib.SOURCES.get("mine_audio_caption").task == "audio_caption"
  assert "world_caption" in sources_lib.SOURCES and "world_captio" not in sources_lib.SOURCES
  assert "mine_caption" not in list(sources_lib.SOURCES)  # answered, never registered
  with pytest.raises(ValueError, match=r"no 'train_audio_caption'.*mine_caption"):
    pipeline.data_source(cfg, "mine_audio_caption", "train")
  with pytest.raises(ValueError, match=r"no 'validation_vqa'"):
    pipeline.data_source(cfg, "mine_vqa", "validation")
  with pytest.raises(FileNotFoundError, match=r"not built.*--jsonl=other:FOLDER"):
    pipeline.data_source(cfg, "other_caption", "train")


@pytest.mark.parametrize("name", ["world", "coco", "Mine", "my-set", "pets_audio", "x__y", "1a"])
def test_bad_names_are_refused(name):
  with pytest.raises(ValueError, match="data set name"):
    user_sets.check_name(name)


def test_too_many_bad_lines_fail_the_build_and_leave_nothing(tmp_path):
  folder = write_folder(tmp_path / "src")
  cfg = data_cfg(tmp_path / "tfds")
  with pytest.raises(ValueError, match=r"13 of 22 lines are bad, more than "
                                       r"max_bad_fraction=0.5.*malformed_json=2"):
    prepare.ensure_jsonl("strict", str(folder), cfg, max_bad_fraction=0.5)
  assert not os.path.exists(user_sets.builder_dir(cfg, "strict"))
  with pytest.raises(FileNotFoundError, match="not built"):
    user_sets.report(cfg, "strict")
  prepare.ensure_jsonl("strict", str(folder), cfg, max_bad_fraction=0.6)  # restarts cleanly
  assert user_sets.report(cfg, "strict")["bad_lines"] == 13


def test_interrupted_build_leaves_nothing_and_restarts_to_the_same_records(
    built, tmp_path, monkeypatch):
  folder, cfg = built
  again = data_cfg(tmp_path / "tfds")
  original, calls = jsonl.record, []

  def crash(ex, data):
    calls.append(ex.key)
    if len(calls) == 2:
      raise KeyboardInterrupt("killed mid-write")
    return original(ex, data)

  monkeypatch.setattr(jsonl, "record", crash)
  with pytest.raises(KeyboardInterrupt):
    prepare.ensure_jsonl("mine", str(folder), again, max_bad_fraction=0.9)
  assert not os.path.exists(user_sets.builder_dir(again, "mine"))
  monkeypatch.undo()
  prepare.ensure_jsonl("mine", str(folder), again, max_bad_fraction=0.9)
  assert _all_records(again, "mine") == _all_records(cfg, "mine")
  assert os.listdir(os.path.dirname(user_sets.builder_dir(again, "mine"))) == ["1.0.0"]


def _all_records(cfg, name):
  out = {}
  for split in user_sets.report(cfg, name)["records"]:
    ds = tfds.builder_from_directory(user_sets.builder_dir(cfg, name)).as_data_source(split=split)
    out[split] = [{k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in ds[i].items()}
                  for i in range(len(ds))]
  return out


def test_rebuild_gives_identical_records(built, tmp_path):
  folder, cfg = built
  again = data_cfg(tmp_path / "tfds")
  prepare.ensure_jsonl("mine", str(folder), again, max_bad_fraction=0.9)
  first, second = _all_records(cfg, "mine"), _all_records(again, "mine")
  assert first == second and sum(len(v) for v in first.values()) == 10
  assert user_sets.report(cfg, "mine") == user_sets.report(again, "mine")


def test_sources_feed_the_pipeline_in_a_mixture(built):
  folder, cfg = built
  config = world_config.test_config("vl", "tiny", cfg.data_dir)
  config.data.mixture = {"mine_caption": 1.0, "mine_vqa_instruct": 1.0, "mine_text": 1.0,
                         "world_caption": 1.0}
  it = pipeline.make_iterator(config, "train", batch_size=4)
  stats = {}
  for _ in range(3):
    batch, counts = pipeline.split_stats(next(it))
    batch_lib.validate_batch(batch, config.model, config.model.decoder.vocab_size)
    for k, v in counts.items():
      stats[k] = stats.get(k, 0) + v
  assert stats["examples"] >= 12 and stats["skipped_bad_image"] == 0


def test_unicode_text_never_crashes_the_tokenizer(built):
  _, cfg = built
  config = world_config.test_config("vl", "tiny", cfg.data_dir)
  tok = prepare.load_tokenizer(config)
  text = "Café über naïve — 東京の写真 🙂 Ωμέγα"
  ids = tok.encode(text)
  assert ids and all(0 <= i < tok.vocab_size for i in ids)
  assert tok.unk in ids  # characters outside the vocabulary become <unk> (no byte fallback)
  assert "Caf" in tok.decode(ids)


@pytest.mark.parametrize("module,source,evaluator", [
    (finetune_caption, "mine_caption", "caption"), (finetune_vqa, "mine_vqa", "vqa")])
def test_finetune_configs_take_a_dataset(module, source, evaluator):
  c = module.get_config("size=tiny,dataset=mine")
  assert set(c.data.mixture) <= {source, source + "_prompted"}
  assert c.evals[evaluator].source == source
  assert all(ev.get("split", "validation") == "validation" for ev in c.evals.values())
  audio = module.get_config("size=paper,dataset=mine,modality=audio")
  assert audio.evals[evaluator].source == "mine_audio_" + ("caption" if evaluator == "caption"
                                                           else "qa")
  with pytest.raises(ValueError, match="modality='audio_image' has no source"):
    finetune_vqa.get_config("size=tiny,dataset=mine,modality=audio_image")


def test_manifest_line_checks():
  ok = manifest.parse_line(json.dumps({"video": "v.mp4", "caption": "moves.", "key": "k"}),
                           "test.jsonl", 3)
  assert [(e.kind, e.medium, e.path, e.key, e.captions) for e in ok] == [
      ("video_caption", "video", "v.mp4", "k", ("moves.",))]
  audio = manifest.parse_line(json.dumps({"audio": "a.wav", "question": "q?", "answers": ["a"]}),
                              "t.jsonl", 1)
  assert audio[0].kind == "audio_qa"
  for obj, reason in [({"image": "x.png", "caption": "c", "key": True}, "wrong_type"),
                      ({"image": "", "caption": "c"}, "empty_target"),
                      ({"text": ""}, "empty_target"), ({}, "missing_target"),
                      ({"image": "x.png", "question": "q?"}, "empty_target")]:
    out = manifest.parse_line(json.dumps(obj), "t.jsonl", 2)
    assert isinstance(out, manifest.Problem) and out.reason == reason, (obj, out)


def test_medium_paths():
  assert jsonl.medium_path("/data/x", "gs://b/i.png") == "gs://b/i.png"
  assert jsonl.medium_path("/data/x", "/abs/i.png") == "/abs/i.png"
  assert jsonl.medium_path("/data/x", "img/i.png") == "/data/x/img/i.png"
  assert jsonl.medium_path("gs://b/x", "img/i.png") == "gs://b/x/img/i.png"
