"""Bad input has defined behaviour: corrupt images are skipped, odd images
converted, empty text skipped, long text truncated; every case is counted
in the `stats` of the next row, and rows stay valid."""
import io

import numpy as np
import pytest
from PIL import Image

from metalm_jax import batch as batch_lib
from metalm_jax.data import packing, pipeline
from metalm_jax.media import audio, images, video
from tests import world_config as testing
from metalm_jax.data import prepare
from metalm_jax.media.images import CLIP_MEAN, CLIP_STD


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  cfg = testing.test_config("vl", "tiny", str(tmp_path_factory.mktemp("tfds")))
  tok = prepare.load_tokenizer(cfg)
  return cfg, tok, pipeline.make_context(cfg, tok)


def _png(arr, mode=None):
  buf = io.BytesIO()
  Image.fromarray(arr, mode).save(buf, format="PNG")
  return buf.getvalue()


def _rows(records, name, ctx):
  ds = pipeline.component(records, name, ctx, 0, 0, shuffle=False, num_epochs=1)
  return list(ds)


def _total(rows):
  out = {}
  for r in rows:
    for k, v in r["stats"].items():
      out[k] = out.get(k, 0) + int(v)
  return out


def _check_rows(rows, cfg):
  batch = packing.collate(rows)
  model_batch, _ = pipeline.split_stats(batch)
  batch_lib.validate_batch(model_batch, cfg.model, cfg.model.decoder.vocab_size)
  return model_batch


def _norm(rgb):
  return (np.asarray(rgb, np.float64) / 255.0 - np.array(CLIP_MEAN)) / np.array(CLIP_STD)


def test_images(setup):
  cfg, tok, ctx = setup
  rng = np.random.default_rng(0)
  rgb = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
  gray = rng.integers(0, 256, (64, 64), dtype=np.uint8)
  rgba = np.concatenate([rgb, np.zeros((64, 64, 1), np.uint8)], -1)
  rgba[:32, :, 3] = 255  # top half opaque, bottom half transparent
  good = _png(rgb)
  cap = ["a red circle."]
  records = [
      {"image": b"\x89PNG not really", "captions": cap},            # corrupt
      {"image": good[: len(good) // 2], "captions": cap},           # truncated file
      {"image": b"", "captions": cap},                              # empty
      {"image": _png(gray), "captions": cap},                       # grayscale
      {"image": _png(rgba), "captions": cap},                       # RGBA
      {"image": _png(rgb[:48, :40]), "captions": cap},              # odd-sized
      {"image": gray, "captions": cap},                             # array, 2-D
      {"image": good, "captions": cap},
  ]
  rows = _rows(records, "world_caption", ctx)
  assert len(rows) == 5
  media = {k: 0 for k in audio.STAT_KEYS + video.STAT_KEYS}  # none here
  assert _total(rows) == {"examples": 5, "skipped_bad_image": 3, "skipped_empty_text": 0,
                          "skipped_bad_label": 0, "converted_image_mode": 3,
                          "resized_nonsquare_image": 1, "truncated_text": 0,
                          "skipped_unreadable_record": 0, **media}
  assert int(rows[0]["stats"]["skipped_bad_image"]) == 3  # carried by the next row
  batch = _check_rows(rows, cfg)
  px = batch["encoders"]["vision"]["pixels"][:, 0]
  np.testing.assert_allclose(px[0], _norm(np.repeat(gray[..., None], 3, -1)), atol=1e-5)
  ref = rgb.astype(np.float64)
  ref[32:] = 255.0  # transparent pixels composite over white
  np.testing.assert_allclose(px[1], _norm(ref), atol=1e-5)
  assert px[2].shape == (64, 64, 3) and np.isfinite(px[2]).all()
  np.testing.assert_allclose(px[3], px[0], atol=1e-6)
  np.testing.assert_allclose(px[4], _norm(rgb), atol=1e-5)


def test_to_rgb_and_preprocess_contract():
  arr, counts = images.to_rgb(np.zeros((8, 8, 1), np.float32) + 0.5)
  assert arr.shape == (8, 8, 3) and arr.dtype == np.uint8 and (arr == 128).all()
  assert counts == {"converted_image_mode": 1}
  assert images.to_rgb(np.zeros((0, 5, 3), np.uint8))[0] is None
  with pytest.raises(ValueError, match="uint8 \\[H, W, 3\\]"):
    images.preprocess_image(np.zeros((8, 8), np.uint8), 8)


def test_text_cases(setup):
  cfg, tok, ctx = setup
  img = _png(np.full((64, 64, 3), 100, np.uint8))
  long_caption = " ".join(["a small red circle"] * 60) + "."
  rows = _rows([
      {"image": img, "captions": ["", "   "]},
      {"image": img, "captions": []},
      {"image": img, "captions": [long_caption]},
      {"image": img, "captions": ["", "a blue square."]},
  ], "world_caption", ctx)
  assert len(rows) == 2
  t = _total(rows)
  assert (t["skipped_empty_text"], t["truncated_text"], t["examples"]) == (2, 1, 2)
  batch = _check_rows(rows, cfg)
  assert (batch["segment_ids"][0] > 0).all()  # the long caption fills the row
  assert tok.decode(batch["tokens"][1][batch["segment_ids"][1] > 0]) == "a blue square."


def test_vqa_and_nli_cases(setup):
  cfg, tok, ctx = setup
  img = _png(np.full((64, 64, 3), 100, np.uint8))
  rows = _rows([
      {"image": img, "question": "", "answers": ["yes"] * 10},
      {"image": img, "question": "is it red?", "answers": ["no"] * 7 + ["yes"] * 3},
  ], "vqav2", ctx)
  assert len(rows) == 1 and _total(rows)["skipped_empty_text"] == 1
  batch = _check_rows(rows, cfg)
  lm = batch["loss_mask"][0] > 0
  assert tok.decode(batch["targets"][0][lm]) == "no"  # majority answer, then </s>
  assert batch["targets"][0][lm][-1] == tok.eod
  rows = _rows([
      {"premise": "a red circle.", "hypothesis": "there is a circle.", "label": -1},
      {"premise": "a red circle.", "hypothesis": "there is a circle.", "label": 0},
      {"premise": "", "hypothesis": "x", "label": 1},
      {"premise": "a red circle.", "hypothesis": "there is a square.", "label": 2},
  ], "mnli", ctx)
  t = _total(rows)
  assert len(rows) == 2 and (t["skipped_bad_label"], t["skipped_empty_text"]) == (1, 1)
  batch = _check_rows(rows, cfg)
  words = [tok.decode(batch["targets"][r][batch["loss_mask"][r] > 0]) for r in range(2)]
  assert words == ["true", "false"]
  # The premise reaches the decoder only through the text encoder.
  assert batch["dock_mask"][0].sum() == len(tok.encode("a red circle."))
  # A long premise fills consecutive encoder items (2 x 16 here), then is cut.
  long = " ".join(["a small red circle and a big blue square"] * 5) + "."
  cfg = testing.test_config("lang", "tiny", cfg.data.data_dir)  # rows of 128
  rows = _rows([{"premise": long, "hypothesis": "there is a circle.", "label": 1}], "mnli",
               pipeline.make_context(cfg, tok))
  batch = _check_rows(rows, cfg)
  n = int(batch["dock_mask"][0].sum())
  room = cfg.data.seq_len - 1 - len(tok.encode("question: there is a circle. true, false or "
                                               "neither? answer:")) - len(tok.encode("neither")) - 1
  assert n == min(32, room) > 16 and _total(rows)["truncated_text"] == 1
  enc = batch["encoders"]["text"]
  np.testing.assert_array_equal(enc["tokens"][0].reshape(-1)[:n], tok.encode(long)[:n])
  assert enc["mask"][0].sum() == n
  assert tok.decode(batch["targets"][0][batch["loss_mask"][0] > 0]) == "neither"


def test_documents(setup):
  cfg, tok, ctx = setup
  long_sentence = " ".join(["the red circle"] * 100) + "."
  many = "\n\n".join("the blue square is small. it sits on the left." for _ in range(400))
  rows = _rows([
      {"document": ""},
      {"document": "\n\n  \n"},
      {"document": long_sentence},
      {"document": many},
      {"document": "one short document. it ends here."},
  ], "world_text", ctx)
  t = _total(rows)
  assert (t["skipped_empty_text"], t["truncated_text"], t["examples"]) == (2, 2, 3)
  batch = _check_rows(rows, cfg)
  seq_len = cfg.data.seq_len
  # The long sentence was cut to one row; the long document to max_doc_tokens.
  assert (batch["segment_ids"][0] > 0).sum() == seq_len
  used = sum(int((r["segment_ids"] > 0).sum()) for r in rows)
  assert used <= seq_len + cfg.data.max_doc_tokens + 2 * len(rows) + 20
  last = rows[-1]
  real = last["tokens"][last["segment_ids"] > 0]
  assert real[-1] == tok.eod and tok.eop not in real[-12:]
