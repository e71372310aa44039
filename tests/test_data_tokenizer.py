"""Tokenizer: exact vocabulary size, special ids, round trips, pickling and
the vocabulary check against the model config."""
import pickle
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
  # Markers written in text become their single ids.
  assert tok.image_start in tok.encode("<image> a red circle")


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


def test_cli_trains_on_a_user_corpus(tmp_path):
  corpus = tmp_path / "c.txt"
  corpus.write_text("\n".join(TEXTS))
  jsonl = tmp_path / "d.jsonl"
  jsonl.write_text('{"text": "a purple cross"}\n{"text": "a blue circle"}\n')
  out = tmp_path / "cli.model"
  subprocess.run([sys.executable, "-m", "metalm_jax.data.tokenizer", f"--input={corpus},{jsonl}",
                  "--vocab_size=257", f"--output={out}"], check=True, capture_output=True)
  assert tok_lib.Tokenizer.from_file(str(out)).vocab_size == 257
