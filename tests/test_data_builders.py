"""Real-data builders read tiny fixtures in the official formats; the TFDS
catalogue path (glue/mnli) runs on tfds.testing.mock_data; the build CLI."""
import csv
import io
import json
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from metalm_jax import batch as batch_lib
from metalm_jax.data import pipeline, prepare
from tests import world_config as testing
from metalm_jax.data.builders.common import as_str


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("tfds"))


def _jpeg(path, color, size=(40, 30)):
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.new("RGB", size, color).save(path, format="JPEG")


def _check(cfg, n=2, batch_size=2):
  it = pipeline.make_iterator(cfg, "train", batch_size=batch_size)
  out = []
  for _ in range(n):
    batch, stats = pipeline.split_stats(next(it))
    batch_lib.validate_batch(batch, cfg.model, cfg.model.decoder.vocab_size)
    assert batch["loss_mask"].sum() > 0
    out.append((batch, stats))
  return out


def test_coco_karpathy(tmp_path, data_dir):
  root = tmp_path / "coco"
  images = []
  for k, (split, sub) in enumerate([("train", "train2014"), ("restval", "val2014"),
                                    ("val", "val2014"), ("test", "val2014"),
                                    ("train", "train2014")]):
    name = f"COCO_{sub}_{k:012d}.jpg"
    if k != 4:  # the last entry's file is missing: skipped at build time
      _jpeg(root / sub / name, (50 * k, 20, 200))
    images.append({"filepath": sub, "filename": name, "split": split, "cocoid": k,
                   "sentences": [{"raw": f"picture number {k} ", "tokens": []},
                                 {"raw": "a blue picture.", "tokens": []}]})
  (root / "dataset_coco.json").write_text(json.dumps({"images": images, "dataset": "coco"}))
  cfg = testing.test_config("vl", "tiny", data_dir, mixture={"coco_caption": 1.0},
                            manual_dirs={"metalm_coco_karpathy": str(root)})
  batches = _check(cfg)
  ds = tfds.data_source("metalm_coco_karpathy", data_dir=data_dir)
  assert {k: len(v) for k, v in ds.items()} == {"train": 2, "validation": 1, "test": 1}
  rec = ds["validation"][0]
  assert rec["image_id"] == 2 and [as_str(c) for c in rec["captions"]] == [
      "picture number 2", "a blue picture."]
  img = np.asarray(Image.open(io.BytesIO(rec["image"])))
  assert img.shape == (30, 40, 3)
  assert sum(s["resized_nonsquare_image"] for _, s in batches) == 4  # 40x30 images


def test_vqav2(tmp_path, data_dir):
  root = tmp_path / "vqa"
  qs, anns = [], []
  for q, img in [(10, 1), (11, 1), (12, 2)]:
    _jpeg(root / "train2014" / f"COCO_train2014_{img:012d}.jpg", (10 * img, 90, 90))
    qs.append({"image_id": img, "question": f"what is number {q}?", "question_id": q})
    answers = [{"answer": "yes" if j < 8 else "no", "answer_confidence": "yes", "answer_id": j + 1}
               for j in range(10)]
    anns.append({"question_id": q, "image_id": img, "answers": answers, "answer_type": "yes/no",
                 "multiple_choice_answer": "yes", "question_type": "what"})
  (root / "v2_OpenEnded_mscoco_train2014_questions.json").write_text(json.dumps({"questions": qs}))
  (root / "v2_mscoco_train2014_annotations.json").write_text(json.dumps({"annotations": anns}))
  cfg = testing.test_config("vl", "tiny", data_dir, mixture={"vqav2": 1.0},
                            manual_dirs={"metalm_vqav2": str(root)})
  tok = prepare.load_tokenizer(cfg)
  (batch, _), _ = _check(cfg)
  for r in range(2):
    assert tok.decode(batch["targets"][r][batch["loss_mask"][r] > 0]) == "yes"
  ds = tfds.data_source("metalm_vqav2", data_dir=data_dir)
  assert list(ds) == ["train"] and len(ds["train"]) == 3
  rec = ds["train"][0]
  assert len(rec["answers"]) == 10 and as_str(rec["question"]).startswith("what is number")


def test_text_corpus(tmp_path, data_dir):
  root = tmp_path / "corpus"
  (root / "train").mkdir(parents=True)
  (root / "validation").mkdir()
  (root / "train" / "a.txt").write_text("the red circle is big.\n\nit sits on the left. yes.")
  (root / "train" / "b.jsonl").write_text(
      json.dumps({"text": "a blue square. it is small."}) + "\nnot json\n" +
      json.dumps({"meta": 1}) + "\n" + json.dumps({"text": "a green cross."}) + "\n")
  (root / "validation" / "c.txt").write_text("held out text.")
  cfg = testing.test_config("lang", "tiny", data_dir, mixture={"text_corpus": 1.0},
                            manual_dirs={"metalm_text_corpus": str(root)})
  _check(cfg, n=1, batch_size=1)
  ds = tfds.data_source("metalm_text_corpus", data_dir=data_dir)
  assert {k: len(v) for k, v in ds.items()} == {"train": 3, "validation": 1}
  texts = sorted(as_str(ds["train"][i]["text"]) for i in range(3))
  assert texts == ["a blue square. it is small.", "a green cross.",
                   "the red circle is big.\n\nit sits on the left. yes."]


def test_missing_manual_dir_is_a_clear_error(tmp_path):
  cfg = testing.test_config("vl", "tiny", str(tmp_path), mixture={"coco_caption": 1.0},
                            manual_dirs={"metalm_coco_karpathy": ""})
  with pytest.raises(ValueError, match="manual_dirs\\['metalm_coco_karpathy'\\] is empty"):
    pipeline.make_iterator(cfg, "validation", batch_size=1)


def test_glue_mnli_through_mock_data(data_dir):
  cfg = testing.test_config("lang", "tiny", data_dir, mixture={"mnli": 1.0}, seq_len=64)
  tok = prepare.load_tokenizer(cfg)  # prepare before mocking
  with tfds.testing.mock_data(num_examples=12):
    batches = _check(cfg, n=3, batch_size=4)
  words = set()
  for batch, stats in batches:
    assert stats["examples"] + stats["skipped_bad_label"] >= 4
    for r in range(4):
      words.add(tok.decode(batch["targets"][r][batch["loss_mask"][r] > 0]))
      assert batch["dock_mask"][r].sum() >= 1  # premise docked through the text encoder
  assert words <= {"true", "neither", "false"} and words


@pytest.mark.integration
def test_build_cli(tmp_path):
  out = subprocess.run([sys.executable, "-m", "metalm_jax.data.build", f"--data_dir={tmp_path}",
                        "--world=test", "--vocab_size=1000,1024"], capture_output=True, text=True)
  assert out.returncode == 0, out.stderr[-2000:]
  for vocab in (1000, 1024):
    name = f"metalm_world_test_{vocab}_v{prepare.TOKENIZER_VERSION}.model"
    assert (tmp_path / "tokenizers" / name).exists()
  assert len(tfds.data_source("metalm_world/test", data_dir=str(tmp_path))["train"]) == 64
  from metalm_jax.data import world
  from metalm_jax.media import images
  import ml_collections as mlc
  recs = prepare.world_records(mlc.ConfigDict(dict(data_dir=str(tmp_path), world="test")),
                               "test_heldout")
  rec = recs[3]
  rgb, counts = images.to_rgb(rec["image"])
  assert counts == {} and rgb.shape == (64, 64, 3)
  np.testing.assert_array_equal(rgb, world.render(world.make_scene(0, "test_heldout", rec["id"]),
                                                  64))


def _decoded(records, source, decode):
  """Each record through its source's fields and `decode` -> (outputs, summed counts)."""
  from metalm_jax.data import sources
  extract = sources.SOURCES.get(source).extract
  outs, total = [], {}
  for i in range(len(records)):
    fields = extract(records[i], np.random.default_rng(i))
    out, counts = decode(fields)
    outs.append((fields, out))
    for k, v in counts.items():
      total[k] = total.get(k, 0) + v
  return outs, total


@pytest.fixture(scope="module")
def audio_set(tmp_path_factory, data_dir):
  """metalm_audio_captions built in data_dir from a Clotho-layout train split
  and an AudioCaps-layout validation split: (manual dir, file name -> bytes)."""
  from tests import media_fixtures as mf
  root = tmp_path_factory.mktemp("clotho")
  (root / "development").mkdir(parents=True)
  (root / "val").mkdir()
  tone = mf.sine(440, 44100, 0.5)
  files = {
      "development/a, tone.wav": mf.audio_bytes(np.stack([tone, tone], 1), 44100),  # stereo 44.1k
      "development/b.flac": mf.audio_bytes(mf.sine(1000, 16000, 3.0), 16000, "FLAC"),  # long
      "development/c.wav": b"RIFF\x00\x00 not a wav file",                         # corrupt
      "val/yt1.flac": mf.audio_bytes(np.zeros(8000), 16000, "FLAC"),              # silent
      "val/yt2.wav": mf.audio_bytes(mf.sine(440, 16000, 0.5), 16000),
  }
  for name, data in files.items():
    (root / name).write_bytes(data)
  with open(root / "clotho_captions_development.csv", "w", newline="") as f:
    rows = csv.writer(f)
    rows.writerow(["file_name"] + [f"caption_{i}" for i in range(1, 6)])
    for n in ("a, tone.wav", "b.flac", "c.wav", "missing.wav"):
      rows.writerow([n] + [f"{n} caption {i}" for i in range(5)])
  (root / "val.csv").write_text(
      "audiocap_id,youtube_id,start_time,caption\n1,yt1,0,quiet room\n2,yt2,0,a beep\n"
      "3,yt2,0, a high beep \n4,gone,0,never there\n")
  cfg = testing.test_config("vl", "tiny", data_dir,
                            manual_dirs={"metalm_audio_captions": str(root)})
  prepare.ensure_manual("metalm_audio_captions", cfg.data)
  return str(root), files


def test_audio_captions(audio_set, data_dir):
  """Clotho layout for train, AudioCaps layout for validation; bad files are
  stored and then counted by the decoder, missing files skipped at build."""
  from metalm_jax.media import audio
  from tests import media_fixtures as mf
  _, files = audio_set
  ds = tfds.data_source("metalm_audio_captions", data_dir=data_dir)
  assert {k: len(v) for k, v in ds.items()} == {"train": 3, "validation": 2}
  val = {as_str(ds["validation"][i]["clip_id"]): ds["validation"][i] for i in range(2)}
  assert [as_str(c) for c in val["yt2"]["captions"]] == ["a beep", "a high beep"]
  assert bytes(val["yt2"]["audio"]) == files["val/yt2.wav"]
  decode = lambda f: audio.decode_audio(f["audio"], sample_rate=16000, max_seconds=2.0)
  outs, total = _decoded(ds["train"], "audio_captions", decode)
  assert total == {"converted_audio_channels": 1, "resampled_audio": 1, "truncated_audio": 1,
                   "skipped_bad_audio": 1}
  by_caption = {f["captions"][0]: w for f, w in outs}
  assert sorted(by_caption) == ["a, tone.wav caption 0", "b.flac caption 0", "c.wav caption 0"]
  np.testing.assert_allclose(by_caption["a, tone.wav caption 0"][160:7840],
                             mf.sine(440, 16000, 0.5)[160:7840], atol=2e-3)
  assert by_caption["c.wav caption 0"] is None
  _, total = _decoded(ds["validation"], "audio_captions", decode)
  assert total == {"skipped_silent_audio": 1}


@pytest.fixture(scope="module")
def video_set(tmp_path_factory, data_dir):
  """metalm_msrvtt built in data_dir from an MSR-VTT layout: (manual dir,
  file name -> bytes)."""
  from tests import media_fixtures as mf
  root = tmp_path_factory.mktemp("msrvtt")
  (root / "TrainValVideo").mkdir(parents=True)
  (root / "TestVideo").mkdir()
  files = {
      "TrainValVideo/video0.mp4": mf.video_bytes(mf.gray_frames([0, 60, 120, 180]),
                                                 [0, 100, 200, 300]),
      "TrainValVideo/video1.mp4": b"\x00\x00\x00\x18ftypisom broken",  # unreadable
      "TrainValVideo/video2.mp4": mf.video_bytes(mf.gray_frames([90, 90], 32, 32),
                                                 [0, 500]),  # short
      "TestVideo/video9.mp4": mf.video_bytes(mf.gray_frames([200] * 4, 32, 32),
                                             [0, 100, 600, 700]),  # variable frame rate
  }
  for name, data in files.items():
    (root / name).write_bytes(data)
  info = lambda vids, split: [{"video_id": v, "split": split, "category": 0} for v in vids]
  sentences = [{"video_id": f"video{k}", "caption": f"clip {k} number {j} ", "sen_id": 2 * k + j}
               for k in (0, 1, 2, 3, 9) for j in range(2)]
  (root / "train_val_videodatainfo.json").write_text(json.dumps({
      "videos": info(["video0", "video1", "video3"], "train") + info(["video2"], "validate"),
      "sentences": sentences[:8]}))
  (root / "test_videodatainfo.json").write_text(json.dumps({
      "videos": info(["video9"], "test"), "sentences": sentences[8:]}))
  cfg = testing.test_config("vl", "tiny", data_dir, manual_dirs={"metalm_msrvtt": str(root)})
  prepare.ensure_manual("metalm_msrvtt", cfg.data)
  return str(root), files


def test_msrvtt(video_set, data_dir):
  from metalm_jax.media import video
  ds = tfds.data_source("metalm_msrvtt", data_dir=data_dir)
  assert {k: len(v) for k, v in ds.items()} == {"train": 2, "validation": 1, "test": 1}
  rec = ds["test"][0]
  assert as_str(rec["video_id"]) == "video9" and [as_str(c) for c in rec["captions"]] == [
      "clip 9 number 0", "clip 9 number 1"]
  decode = lambda f: video.decode_video(f["video"], frames=4, image_size=16)
  counts = {}
  for split in ("train", "validation", "test"):
    outs, total = _decoded(ds[split], "msrvtt_caption", decode)
    counts[split] = total
    for _, clip in outs:
      assert clip is None or (clip.shape == (4, 16, 16, 3) and clip.dtype == np.float32)
  assert counts == {"train": {"skipped_bad_video": 1, "resized_nonsquare_video": 1},
                    "validation": {"repeated_video_frames": 1},
                    "test": {"converted_variable_frame_rate": 1, "repeated_video_frames": 1}}


def test_media_builders_through_mock_data(data_dir):
  """tfds.testing.mock_data fills the encoded-file fields with random text:
  every record comes out of the decoders skipped and counted, none raises."""
  from metalm_jax.media import audio, video
  import metalm_jax.data.builders  # noqa: F401
  with tfds.testing.mock_data(num_examples=3):
    clips = tfds.data_source("metalm_audio_captions", split="train", data_dir=data_dir)
    _, total = _decoded(clips, "audio_captions", lambda f: audio.decode_audio(
        f["audio"], sample_rate=16000, max_seconds=1.0))
    assert total == {"skipped_bad_audio": 3}
    vids = tfds.data_source("metalm_msrvtt", split="train", data_dir=data_dir)
    _, total = _decoded(vids, "msrvtt_caption", lambda f: video.decode_video(
        f["video"], frames=2, image_size=16))
    assert total == {"skipped_bad_video": 3}


def test_real_audio_and_video_through_the_pipeline(audio_set, video_set, data_dir):
  """Both real-data sets, mixed, through pipeline.make_iterator for the
  four-modality model: batches keep the contract; every docked clip is the
  training decoder's output for one of the files (44.1 kHz stereo WAV, 3 s
  FLAC, 64x48 mp4), its row trained on one of that file's captions; the
  corrupt files are skipped and every conversion counted under one name."""
  from metalm_jax.media import audio, video
  from tests import av_fixtures
  (audio_root, afiles), (video_root, vfiles) = audio_set, video_set
  cfg = av_fixtures.av_test_config(
      data_dir, manual_dirs={"metalm_audio_captions": audio_root, "metalm_msrvtt": video_root},
      mixture={"audio_captions": 0.5, "msrvtt_caption": 0.5})
  tok = prepare.load_tokenizer(cfg)
  aud, vid = cfg.model.encoders.audio, cfg.model.encoders.video
  norm = dict(mean=tuple(cfg.data.image_mean), std=tuple(cfg.data.image_std))
  want = {  # docked input -> the captions of its file
      "audio": [(audio.decode_audio(afiles[f"development/{n}"], sample_rate=aud.sample_rate,
                                    max_seconds=aud.max_seconds)[0],
                 [f"{n} caption {i}" for i in range(5)]) for n in ("a, tone.wav", "b.flac")],
      "video": [(video.decode_video(vfiles["TrainValVideo/video0.mp4"], frames=vid.frames,
                                    image_size=vid.image_size, **norm)[0],
                 [f"clip 0 number {j}" for j in range(2)])]}
  keys = {"audio": "waveform", "video": "frames"}
  it = pipeline.make_iterator(cfg, "train", batch_size=4)
  seen, total = set(), {}
  for _ in range(4):
    batch, stats = pipeline.split_stats(next(it))
    batch_lib.validate_batch(batch, cfg.model, cfg.model.decoder.vocab_size)
    for k, v in stats.items():
      total[k] = total.get(k, 0) + v
    for r in range(4):
      kinds = [n for n in keys if batch["encoders"][n]["valid"][r, 0]]
      assert len(kinds) == 1, kinds  # one clip per row, of one kind
      x = batch["encoders"][kinds[0]][keys[kinds[0]]][r, 0]
      match = [i for i, (ref, _) in enumerate(want[kinds[0]]) if np.array_equal(x, ref)]
      assert len(match) == 1, kinds[0]
      seen.add((kinds[0], match[0]))
      trained = batch["targets"][r][batch["loss_mask"][r] > 0].tolist()
      assert trained[-1] == tok.eod
      assert trained[:-1] in [tok.encode(c) for c in want[kinds[0]][match[0]][1]]
  assert seen == {("audio", 0), ("audio", 1), ("video", 0)}
  assert total["examples"] == 16
  assert total["skipped_bad_audio"] >= 1 and total["skipped_bad_video"] >= 1
  assert total["converted_audio_channels"] == total["resampled_audio"] >= 1  # the 44.1k file
  assert total["truncated_audio"] >= 1 and total["resized_nonsquare_video"] >= 1
  assert total["skipped_silent_audio"] == total["skipped_empty_video"] == 0
