"""Sound clips and videos through the pipeline: batches of the four-modality
config keep the batch contract, each clip docks its encoder's next item
between its brackets with the record's samples / frames (float64
references), every new format's training row equals its evaluation prompt,
and the configs build (a few training steps once the audio and video
encoders are registered)."""
import copy
import io
import json
import types
import wave

import numpy as np
import pytest
from PIL import Image

from configs import finetune_caption, finetune_vqa, pretrain_av
from metalm_jax import batch as batch_lib
from metalm_jax import presets
from metalm_jax.data import formats, pipeline, prepare, sources, tasks
from metalm_jax.media.images import CLIP_MEAN, CLIP_STD
from metalm_jax.evaluate import evaluators as E
from tests import av_fixtures
from tests.eval_fixtures import assert_row_matches_prompt

AV_SOURCES = {"audio_caption": "world_audio_caption",
              "audio_caption_prompted": "world_audio_caption_prompted",
              "audio_qa": "world_audio_qa", "audio_image_qa": "world_audio_image_qa",
              "video_caption": "world_video_caption",
              "video_caption_prompted": "world_video_caption_prompted",
              "video_qa": "world_video_qa"}
BRACKETS = {"whisper": ("audio_start", "audio_end"), "video": ("video_start", "video_end"),
            "vit": ("image_start", "image_end")}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
  cfg = av_fixtures.av_test_config(str(tmp_path_factory.mktemp("tfds")))
  return cfg, prepare.load_tokenizer(cfg)


def _wave(data, size):
  with wave.open(io.BytesIO(data), "rb") as w:
    x = np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float64) / 32768.0
  out = np.zeros(size)
  out[:len(x)] = x
  return out


def _normalised(png):
  img = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), np.float64)
  return (img / 255.0 - np.array(CLIP_MEAN)) / np.array(CLIP_STD)


def test_tokenizer_has_the_brackets(world):
  _, tok = world
  ids = [tok.audio_start, tok.audio_end, tok.video_start, tok.video_end]
  assert len(set(ids)) == 4 and tok.extras[-1] < min(ids)  # after the reserved extras
  assert [tok.id_to_piece(i) for i in ids] == ["<audio>", "</audio>", "<video>", "</video>"]
  assert {tok.audio_start, tok.audio_end} <= set(tok.encode("<audio> a loud red circle </audio>"))
  assert all(len(tok.encode(w)) <= 2 for w in ("sound", "loud", "quiet", "moves", "appears"))


def test_four_modality_batches_keep_the_contract(world):
  """Every docked run of the audio / video encoder is one whole item, between
  its brackets, on a valid item, in item order; only text after the inputs is
  trained; the media counters travel with the batches."""
  cfg, tok = world
  cfg = copy.deepcopy(cfg)
  cfg.data.mixture = dict(cfg.data.mixture, world_audio_qa=0.1, world_video_qa=0.1,
                          world_audio_image_qa=0.1)
  model = cfg.model
  offsets = batch_lib.dock_offsets(model.encoders)
  it = pipeline.make_iterator(cfg, "train", batch_size=8)
  docked = set()
  for _ in range(6):
    batch, stats = pipeline.split_stats(next(it))
    batch_lib.validate_batch(batch, model, model.decoder.vocab_size)
    assert set(tasks.STAT_KEYS) <= set(stats) and stats["skipped_bad_audio"] == 0
    for r in range(8):
      toks, dmask, didx = batch["tokens"][r], batch["dock_mask"][r], batch["dock_index"][r]
      for name in ("audio", "video"):
        enc = model.encoders[name]
        t = batch_lib.slot_length(enc)
        pos = np.flatnonzero(dmask & (didx >= offsets[name]) & (didx < offsets[name] + t))
        if not len(pos):
          assert not batch["encoders"][name]["valid"][r].any()
          continue
        docked.add(name)
        np.testing.assert_array_equal(pos, pos[0] + np.arange(t))
        np.testing.assert_array_equal(didx[pos], offsets[name] + np.arange(t))
        start, end = BRACKETS[enc.type]
        assert toks[pos[0] - 1] == getattr(tok, start) and toks[pos[-1] + 1] == getattr(tok, end)
        assert batch["encoders"][name]["valid"][r, 0]
        assert not (batch["loss_mask"][r][:pos[-1] + 1]).any()  # nothing trained before
  assert docked == {"audio", "video"}


@pytest.mark.parametrize("source,key", [("world_audio_caption", "audio"),
                                        ("world_video_caption", "video")])
def test_clips_match_the_records(world, source, key):
  cfg, tok = world
  cfg = copy.deepcopy(cfg)
  cfg.data.mixture = {source: 1.0}
  recs = pipeline.data_source(cfg.data, source, "train")
  batch, _ = pipeline.split_stats(next(pipeline.make_iterator(cfg, "train", batch_size=4,
                                                              shuffle=False)))
  enc = cfg.model.encoders[key]
  for r in range(4):
    rec = recs[r]
    if key == "audio":
      size = int(round(enc.max_seconds * enc.sample_rate))
      np.testing.assert_allclose(batch["encoders"]["audio"]["waveform"][r, 0],
                                 _wave(rec["audio"], size), atol=1e-7)
    else:
      want = np.stack([_normalised(f) for f in rec["video"]])
      np.testing.assert_allclose(batch["encoders"]["video"]["frames"][r, 0], want, atol=1e-5)
    text = tok.decode(batch["targets"][r][batch["loss_mask"][r] > 0])
    assert text in [c.decode() for c in rec[f"{key}_captions"]]


@pytest.mark.parametrize("name", sorted(AV_SOURCES))
def test_training_rows_and_evaluation_prompts_agree(world, name):
  """As tests/test_formats.py for the image and text formats: the row the
  pipeline trains on and the prompt the evaluators build agree token for
  token, docking and encoder inputs included."""
  cfg, tok = world
  src = sources.SOURCES.get(AV_SOURCES[name])
  assert src.task == name
  fmt = formats.FORMATS.get(name)
  env = E.Env(cfg, types.SimpleNamespace(cfg=cfg.model), None, tok, 0)
  recs = pipeline.data_source(cfg.data, AV_SOURCES[name], "train")
  for i in range(4):
    fields = src.extract(recs[i], np.random.default_rng([0, 0, i]))
    ex, row = assert_row_matches_prompt(cfg, tok, name, fields, i, env=env)
    kinds = [type(p).__name__ for p in ex.parts[:len(fmt.media())]]
    assert kinds == [{"image": "Image", "audio": "Audio", "video": "Video"}[k]
                     for k, _ in fmt.media()]
  if not fmt.templates[0]:  # captioning: zero-shot evaluation asks with the format's prompt
    ex = E.make_example(fmt, fields, env, E.resolve(dict(type="caption")))
    assert ex.parts[-1].text == fmt.eval_prompt


def test_bad_clips_are_skipped_and_counted(world):
  cfg, tok = world
  ctx = pipeline.make_context(cfg, tok)
  cases = [("audio_caption", {"audio": b"RIFFxxxxWAVE", "captions": ["a sound."]},
            "skipped_bad_audio"),
           ("video_qa", {"video": [], "question": "which object moved?", "answers": ["none"]},
            "skipped_empty_video")]
  env = E.Env(cfg, types.SimpleNamespace(cfg=cfg.model), None, tok, 0)
  for name, fields, key in cases:
    stats = tasks.new_stats()
    out = tasks.TASKS.get(name)(ctx, fields, np.random.default_rng(0), stats)
    assert not out["ok"] and stats[key] == 1 and stats["examples"] == 0
    assert E.make_example(formats.FORMATS.get(name), fields, env,
                          E.resolve(dict(type="vqa"))) is None
  no_audio = copy.deepcopy(cfg)
  del no_audio.model.encoders["audio"]
  with pytest.raises(ValueError, match="'whisper' \\(audio\\) encoder"):
    tasks.TASKS.get("audio_qa")(pipeline.make_context(no_audio, tok), {}, None, tasks.new_stats())


def test_configs_build(world):
  """pretrain_av: the tiny VL model plus audio and video encoders, the VL
  rows scaled and the clips' captions; the tiny VL mixture is unchanged; the
  finetune configs take a modality."""
  assert presets.data_config("vl", "tiny").mixture.to_dict() == {
      "world_caption": 0.45, "world_interleaved": 0.25, "world_text": 0.2,
      "world_instructions": 0.1}
  c = pretrain_av.get_config("size=tiny")
  fa = finetune_caption.get_config("size=tiny,modality=audio")
  fv = finetune_vqa.get_config("size=tiny,modality=video")
  fi = finetune_vqa.get_config("size=tiny,modality=audio_image")
  with pytest.raises(ValueError, match="modality='smell'"):
    finetune_vqa.get_config("modality=smell")
  with pytest.raises(ValueError, match="size='paper'"):
    finetune_caption.get_config("size=paper,modality=video")
  types_ = {k: v.type for k, v in c.model.encoders.items()}
  assert types_ == {"vision": "vit", "text": "bert", "audio": "whisper", "video": "video"}
  assert c.model.encoders.vision.max_items == 4
  mix = c.data.mixture
  assert mix["world_audio_caption"] == mix["world_video_caption"] == 0.15
  assert abs(sum(mix.values()) - 1) < 1e-9 and mix["world_caption"] == pytest.approx(0.315)
  for name in mix:
    sources.SOURCES.get(name)
  assert fa.data.mixture.to_dict() == {"world_audio_caption_prompted": 1.0}
  assert fa.evals.zeroshot.prompt == formats.AUDIO_CAPTION_PROMPT
  assert fv.evals.vqa.source == "world_video_qa" and "audio" in fv.model.encoders
  assert fi.data.mixture.to_dict() == {"world_audio_image_qa": 1.0}
  assert finetune_vqa.get_config("size=tiny").data.mixture.to_dict() == {"world_vqa": 1.0}


@pytest.mark.integration
def test_four_modality_training_steps(world, tmp_path):
  """A few steps of configs/pretrain_av.py (shrunk) on the test world: the
  trainer's checks pass and the loss is finite and falls."""
  import jax
  from metalm_jax.train import trainer as trainer_lib
  cfg, _ = world
  c = pretrain_av.get_config("size=tiny,steps=12")
  c.data = copy.deepcopy(cfg.data)
  c.batch_size, c.log.every_steps, c.eval_loss.every_steps = 4, 1, 0
  c.checkpoint.async_save = False
  c.mesh.update(data=1, fsdp=1, tensor=1)
  c.optimizer.warmup_steps = 2
  c.metrics.peak_flops = 1e11  # skip the start-up matmul measurement
  # Every stack one narrow layer: the test is about the four-modality path,
  # and its compile time is the suite's (the config's own sizes: README).
  for stack in [c.model.decoder] + [c.model.encoders[n] for n in c.model.encoders]:
    stack.update(num_layers=1, emb_dim=32, mlp_dim=64, num_heads=2)
  c.model.encoders.video.temporal_layers = 1
  trainer_lib.check_config(c, num_devices=1, process_count=1)
  work = tmp_path / "run"
  out = trainer_lib.train(c, str(work), devices=jax.devices()[:1])
  assert out["step"] == 12
  rows = [json.loads(line) for line in open(work / "metrics.jsonl") if line.strip()]
  loss = [r["loss"] for r in rows if "loss" in r]
  assert len(loss) >= 10 and np.all(np.isfinite(loss))
  assert np.mean(loss[-3:]) < np.mean(loss[:3]) - 0.3, loss
