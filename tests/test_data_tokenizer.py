"""Tokenizer: exact vocabulary size, special ids, round trips, pickling and
the vocabulary check against the model config."""
import pickle
import re
import subprocess
import sys

import pytest

from metalm_jax.data import prepare
from metalm_jax.data import tokenizer as tok_lib
from metalm_jax.data import world

TEXTS = [t for i in range(200) for t in world.scene_record(0, "train", i, 16, 2)["captions"]]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
  return tok_lib.train_tokenizer(TEXTS, 300, str(tmp_path_factory.mktemp("tok") / "t.model"))


@pytest.mark.parametrize("vocab", [100, 1000, 50304])
def test_trained_size_is_exact(tmp_path, vocab):
  t = tok_lib.train_tokenizer(TEXTS[:200], vocab, str(tmp_path / "v.model"))
  assert t.vocab_size == vocab
  assert tok_lib.Tokenizer.from_file(str(tmp_path / "v.model")).vocab_size == vocab


def test_special_ids(tok):
  assert (tok.pad, tok.unk, tok.bos, tok.eod) == (0, 1, 2, 3)
  assert tok.eos == tok.eod
  ids = [tok.eop, tok.image_start, tok.image_end, tok.sep] + tok.extras
  assert ids == list(range(4, 4 + 4 + tok_lib.NUM_RESERVED))
  assert [tok.id_to_piece(i) for i in (tok.eop, tok.image_start, tok.image_end)] == [
      "<eop>", "<image>", "</image>"]
  # The audio and video brackets follow the reserved extras (older ids unchanged).
  media = [getattr(tok, role) for role in tok_lib.MEDIA_SYMBOLS]
  assert media == list(range(4 + 4 + tok_lib.NUM_RESERVED, 4 + 4 + tok_lib.NUM_RESERVED + 4))
  assert [tok.id_to_piece(i) for i in media] == list(tok_lib.MEDIA_SYMBOLS.values())
  # Markers written in text become their single ids.
  assert tok.image_start in tok.encode("<image> a red circle")
  assert tok.video_end in tok.encode("a red circle </video>")


def test_round_trip_and_decode_drops_specials(tok):
  for text in TEXTS[:50]:
    ids = tok.encode(text)
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == text
    assert tok.decode([tok.bos] + ids + [tok.eod, tok.pad, tok.pad]) == text


def test_pickles(tok):
  t2 = pickle.loads(pickle.dumps(tok))
  assert t2.encode(TEXTS[3]) == tok.encode(TEXTS[3]) and t2.vocab_size == tok.vocab_size


def test_too_small_or_empty_is_an_error(tmp_path):
  with pytest.raises(ValueError, match="vocab_size=10"):
    tok_lib.train_tokenizer(TEXTS, 10, str(tmp_path / "x.model"))
  with pytest.raises(ValueError, match="no non-empty text"):
    tok_lib.train_tokenizer(["", "  "], 100, str(tmp_path / "x.model"))


def test_load_tokenizer_checks_vocab(tmp_path, tok):
  import ml_collections as mlc
  path = tmp_path / "t.model"
  path.write_bytes(tok.__getstate__()["proto"])
  cfg = mlc.ConfigDict(dict(data=dict(tokenizer=str(path)),
                            model=dict(decoder=dict(vocab_size=tok.vocab_size))))
  assert prepare.load_tokenizer(cfg).encode("a red circle") == tok.encode("a red circle")
  cfg.model.decoder.vocab_size = 512
  with pytest.raises(ValueError, match="vocab_size=300.*vocab_size=512"):
    prepare.load_tokenizer(cfg)


@pytest.mark.integration
def test_cli_trains_on_a_user_corpus(tmp_path):
  corpus = tmp_path / "c.txt"
  corpus.write_text("\n".join(TEXTS))
  jsonl = tmp_path / "d.jsonl"
  jsonl.write_text('{"text": "a purple cross"}\n{"text": "a blue circle"}\n')
  out = tmp_path / "cli.model"
  subprocess.run([sys.executable, "-m", "metalm_jax.data.tokenizer", f"--input={corpus},{jsonl}",
                  "--vocab_size=257", f"--output={out}"], check=True, capture_output=True)
  assert tok_lib.Tokenizer.from_file(str(out)).vocab_size == 257


@pytest.fixture(scope="module")
def world_tok(tmp_path_factory):
  """The embedded world's tokenizer as a run gets it (test world, vocab 1024)."""
  from tests import world_config as testing
  cfg = testing.test_config("vl", "tiny", str(tmp_path_factory.mktemp("tfds")))
  assert prepare.tokenizer_path(cfg.data, 1024).endswith(
      f"_1024_v{prepare.TOKENIZER_VERSION}.model")
  return prepare.load_tokenizer(cfg)


def test_world_tokenizer_knows_the_prompt_vocabulary(world_tok):
  """Every template, evaluation prompt and label word of formats.py, as written
  and capitalised, encodes without <unk> and decodes back exactly; each label
  word is 1 piece (measured: true, neither, false and the binding names 1
  each; at most 2 allowed)."""
  from metalm_jax.data import formats
  tok = world_tok
  vocab = formats.prompt_vocabulary()
  for name in formats.FORMATS:  # every template's words, fields removed
    fmt = formats.FORMATS.get(name)
    for t in fmt.templates + (fmt.eval_template(),):
      words = " ".join(re.sub(r"\{\w+\}", " ", t).split())
      assert not words or words in vocab, (name, t)
  assert formats.CAPTION_PROMPT in vocab and {"true", "neither", "false"} <= set(vocab)
  for text in vocab + [prepare.capitalised(v) for v in vocab]:
    ids = tok.encode(text)
    assert tok.unk not in ids and tok.decode(ids) == text, (text, ids)
  labels = {w for n in formats.FORMATS for w in formats.FORMATS.get(n).labels}
  counts = {w: len(tok.encode(w)) for w in labels}
  assert max(counts.values()) <= 2, counts
  assert {w: counts[w] for w in formats.NLI_WORDS} == {"true": 1, "neither": 1, "false": 1}
  assert all(counts[w] == 1 for w in formats.BIND_NAMES), counts  # measured: 1 piece each
  for text in ("Summarize this image:", "Summarize this image: A Red Circle. XYZ?"):
    ids = tok.encode(text)
    assert tok.unk not in ids and tok.decode(ids) == text, [tok.id_to_piece(i) for i in ids]
  assert len(tok.encode("Summarize this image:")) <= 4
  # A filled template round-trips too (a real question of the world).
  q = formats.VQA_TEMPLATE.format(question="what color is the circle?")
  assert tok.decode(tok.encode(q)) == q and tok.unk not in tok.encode(q)


def test_a_file_without_media_brackets_loads_and_says_so(tok):
  """A tokenizer file of an older recipe (no <audio>/<video>) still loads with
  those ids None; docking audio with it is a clear error."""
  from sentencepiece import sentencepiece_model_pb2 as sp_pb2
  from metalm_jax.models import modalities
  proto = sp_pb2.ModelProto()
  proto.ParseFromString(tok.__getstate__()["proto"])
  for p in proto.pieces:
    if p.piece in tok_lib.MEDIA_SYMBOLS.values():
      p.piece = "<old" + p.piece.replace("/", "_").strip("<>") + ">"
  old = tok_lib.Tokenizer(proto.SerializeToString())
  assert old.audio_start is None and old.video_end is None and old.image_start == tok.image_start
  assert modalities.brackets(tok, "audio") == (tok.audio_start, tok.audio_end)
  with pytest.raises(ValueError, match="audio_start / audio_end"):
    modalities.brackets(old, "audio")
