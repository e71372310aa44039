"""Prompt builders: docking layout, left padding, ICL order, contract checks."""
import numpy as np
import pytest

from metalm_jax import batch as batch_lib
from metalm_jax.evaluate import prompts
from tests.model_fixtures import small_model_cfg
from tests.decode_fixtures import FakeTokenizer, image


@pytest.fixture(scope="module")
def cfg():
  return small_model_cfg()


def test_image_and_text_layout(cfg):
  tok = FakeTokenizer()
  t = batch_lib.slot_length(cfg.encoders.vision)  # 5
  off = batch_lib.dock_offsets(cfg.encoders)
  b = prompts.build_batch(
      [[prompts.Image(image(cfg, 0.5)), prompts.Text("what color"),
        prompts.EncodedText("red sky")],
       [prompts.Text("a cat")]], tok, cfg, seq_len=16)
  batch_lib.validate_batch(b, cfg, cfg.decoder.vocab_size)
  # Row 0: bos <image> 5 docked </image> what color red sky = 12 tokens, 4 left pads.
  n0 = 1 + 1 + t + 1 + 2 + 2
  assert n0 == 12
  np.testing.assert_array_equal(b["segment_ids"][0], [0] * 4 + [1] * 12)
  np.testing.assert_array_equal(b["positions"][0, 4:], np.arange(12))
  row = b["tokens"][0, 4:]
  assert row[0] == tok.bos and row[1] == tok.image_start and row[2 + t] == tok.image_end
  np.testing.assert_array_equal(row[3 + t:5 + t], tok.encode("what color"))
  np.testing.assert_array_equal(row[5 + t:], tok.encode("red sky"))
  dm, di = b["dock_mask"][0, 4:], b["dock_index"][0, 4:]
  expected_mask = np.zeros(12, bool)
  expected_mask[2:2 + t] = True      # image span
  expected_mask[5 + t:] = True       # encoded text span
  np.testing.assert_array_equal(dm, expected_mask)
  np.testing.assert_array_equal(di[2:2 + t], off["vision"] + np.arange(t))
  np.testing.assert_array_equal(di[5 + t:], off["text"] + np.arange(2))
  assert not b["dock_mask"][0, :4].any() and (b["tokens"][0, :4] == tok.pad).all()
  vis, txt = b["encoders"]["vision"], b["encoders"]["text"]
  np.testing.assert_array_equal(vis["valid"], [[True, False], [False, False]])
  assert (vis["pixels"][0, 0] == 0.5).all()
  np.testing.assert_array_equal(txt["tokens"][0, 0, :2], tok.encode("red sky"))
  np.testing.assert_array_equal(txt["mask"][0, 0], [True, True, False, False, False, False])
  # Row 1: bos a cat, right-aligned; targets are the next tokens.
  np.testing.assert_array_equal(b["tokens"][1, -3:], [tok.bos] + tok.encode("a cat"))
  np.testing.assert_array_equal(b["targets"][1, -3:-1], tok.encode("a cat"))
  assert b["loss_mask"].sum() == 0


def test_icl_layout_docks_each_demonstration_to_its_own_item(cfg):
  tok = FakeTokenizer()
  t = batch_lib.slot_length(cfg.encoders.vision)
  q = prompts.Text("question: what color")
  demos = [([prompts.Image(image(cfg, 1.0)), q], "answer: red"),
           ([prompts.Image(image(cfg, 2.0)), q], "answer: blue")]
  # Three images need max_items=3.
  cfg3 = small_model_cfg()
  cfg3.encoders.vision.max_items = 3
  b = prompts.build_icl_batch([(demos, [prompts.Image(image(cfg, 3.0)), q,
                                        prompts.Text("answer:")])], tok, cfg3)
  batch_lib.validate_batch(b, cfg3, cfg3.decoder.vocab_size)
  off3 = batch_lib.dock_offsets(cfg3.encoders)
  toks, dm, di = b["tokens"][0], b["dock_mask"][0], b["dock_index"][0]
  # <image> span </image> question: what color | answer: label | </s>
  demo_len = 1 + t + 1 + 3 + 2 + 1
  starts = [1, 1 + demo_len, 1 + 2 * demo_len]
  for item, s in enumerate(starts):
    assert toks[s] == tok.image_start and toks[s + t + 1] == tok.image_end
    np.testing.assert_array_equal(dm[s + 1:s + 1 + t], True)
    np.testing.assert_array_equal(di[s + 1:s + 1 + t], off3["vision"] + item * t + np.arange(t))
    np.testing.assert_array_equal(toks[s + t + 2:s + t + 5], tok.encode("question: what color"))
    assert not dm[s + t + 2:s + t + 5].any()
  # Labels are plain tokens, each followed by </s>, in demonstration order;
  # the query ends with "answer:" (no </s>, one <s> in front of everything).
  np.testing.assert_array_equal(toks[starts[0] + t + 5:starts[1]],
                                tok.encode("answer: red") + [tok.eod])
  np.testing.assert_array_equal(toks[starts[1] + t + 5:starts[2]],
                                tok.encode("answer: blue") + [tok.eod])
  assert not dm[starts[0] + t + 5:starts[1]].any()
  assert list(toks).count(tok.bos) == 1 and list(toks).count(tok.eod) == 2
  assert toks[-1] == tok.encode("answer:")[0] and len(toks) == starts[2] + t + 6
  pixels = b["encoders"]["vision"]["pixels"][0]
  np.testing.assert_array_equal(pixels[:, 0, 0, 0], [1.0, 2.0, 3.0])


def test_icl_text_demonstrations_go_through_the_language_encoder(cfg):
  tok = FakeTokenizer()
  off = batch_lib.dock_offsets(cfg.encoders)
  demos = [([prompts.EncodedText("great film")], "positive")]
  b = prompts.build_icl_batch([(demos, [prompts.EncodedText("awful movie")]),
                               ([], [prompts.EncodedText("ok")])], tok, cfg)
  batch_lib.validate_batch(b, cfg, cfg.decoder.vocab_size)
  # Row 0: bos [great film] positive </s> [awful movie]
  np.testing.assert_array_equal(b["tokens"][0], [tok.bos] + tok.encode("great film positive")
                                + [tok.eod] + tok.encode("awful movie"))
  np.testing.assert_array_equal(b["dock_mask"][0], [False, True, True, False, False, True, True])
  t = cfg.encoders.text.max_len
  np.testing.assert_array_equal(b["dock_index"][0], [0, off["text"], off["text"] + 1, 0, 0,
                                                     off["text"] + t, off["text"] + t + 1])
  np.testing.assert_array_equal(b["encoders"]["text"]["tokens"][0, 1, :2],
                                tok.encode("awful movie"))
  # Row 1 (k=0): left padded, its one item is item 0.
  np.testing.assert_array_equal(b["segment_ids"][1], [0, 0, 0, 0, 0, 1, 1])
  np.testing.assert_array_equal(b["dock_mask"][1], [False] * 6 + [True])
  assert b["dock_index"][1, 6] == off["text"]


def test_bad_inputs_name_the_field(cfg):
  tok = FakeTokenizer()
  with pytest.raises(ValueError, match="Image.pixels has shape"):
    prompts.build_batch([[prompts.Image(np.zeros((8, 8, 3)))]], tok, cfg)
  with pytest.raises(ValueError, match="max_items=2"):
    prompts.build_batch([[prompts.Image(image(cfg, 0.0))] * 3], tok, cfg)
  with pytest.raises(ValueError, match="max_len=6"):
    prompts.build_batch([[prompts.EncodedText("a cat is a red dog is blue")]], tok, cfg)
  with pytest.raises(ValueError, match="seq_len=3"):
    prompts.build_batch([[prompts.Text("a cat dog")]], tok, cfg, seq_len=3)
  with pytest.raises(ValueError, match="not a 'vit' encoder"):
    prompts.build_batch([[prompts.Image(image(cfg, 0.0), encoder="text")]], tok, cfg)
  with pytest.raises(ValueError, match=r"demonstrations\[0\]"):
    prompts.icl_parts([([prompts.Text("a")], "b", "c")], [], tok)
  with pytest.raises(ValueError, match=r"Tokens.ids has id 9999 >= model.decoder.vocab_size"):
    prompts.build_batch([[prompts.Tokens((9999,))]], tok, cfg)
  with pytest.raises(ValueError, match=r"Tokens.ids=\(\) must be"):
    prompts.Tokens(())
