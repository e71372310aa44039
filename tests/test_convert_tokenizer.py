"""tokenizer.json through `tokenizers`, with the data Tokenizer's interface."""
import json

import pytest

tokenizers = pytest.importorskip("tokenizers")

from metalm_jax.data.hf_tokenizer import HfTokenizer  # noqa: E402

WORDS = ["a", "cat", "dog", "sits", "on", "the", "mat", "question", "answer", ":", "?"]


def _word_level(path, specials):
  from tokenizers import Tokenizer, models, pre_tokenizers
  vocab = {t: i for i, t in enumerate(specials + WORDS)}
  tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>" if "<unk>" in specials else None))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  tok.add_special_tokens(specials)
  tok.save(str(path))
  return vocab


def test_word_level_round_trip_and_specials(tmp_path):
  specials = ["<pad>", "<unk>", "<s>", "</s>", "<image>", "</image>"]
  vocab = _word_level(tmp_path / "tokenizer.json", specials)
  tok = HfTokenizer(str(tmp_path / "tokenizer.json"))
  assert tok.vocab_size == len(vocab)
  assert (tok.pad, tok.unk, tok.bos, tok.eos, tok.image_start, tok.image_end) == (0, 1, 2, 3, 4, 5)
  assert tok.eod == tok.eos
  ids = tok.encode("the cat sits on the mat ?")
  assert ids == [vocab[w] for w in "the cat sits on the mat ?".split()]
  assert tok.encode("the zebra") == [vocab["the"], tok.unk]
  assert tok.decode([tok.bos] + ids + [tok.eos, tok.pad]) == "the cat sits on the mat ?"
  assert tok.id_to_piece(vocab["dog"]) == "dog"


def test_gpt2_style_eos_and_side_files(tmp_path):
  from tokenizers import Tokenizer, models, pre_tokenizers, decoders, trainers
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator(["the cat sits on the mat", "a dog sits"] * 20, trainer)
  tok.save(str(tmp_path / "tokenizer.json"))
  t = HfTokenizer(str(tmp_path / "tokenizer.json"))
  eot = t.token_to_id("<|endoftext|>")
  assert t.bos == t.eos == t.pad == eot and t.unk is None and t.image_start is None
  text = "the dog sits on a mat"
  assert t.decode(t.encode(text) + [eot]) == text
  # special_tokens_map.json names the roles explicitly (HF convention).
  (tmp_path / "special_tokens_map.json").write_text(json.dumps(
      {"eos_token": {"content": "<|endoftext|>"}, "pad_token": "<|endoftext|>"}))
  assert HfTokenizer(str(tmp_path / "tokenizer.json")).eos == eot


def test_missing_file_is_named(tmp_path):
  with pytest.raises(FileNotFoundError, match="nothere.json"):
    HfTokenizer(str(tmp_path / "nothere.json"))


def test_tokenizer_file_registry(tmp_path):
  from metalm_jax.data.tokenizer import Tokenizer, train_tokenizer
  from metalm_jax.data.tokenizer_kinds import load as load_tokenizer
  _word_level(tmp_path / "tokenizer.json", ["<pad>", "<unk>", "<s>", "</s>"])
  assert isinstance(load_tokenizer(str(tmp_path / "tokenizer.json")), HfTokenizer)
  sp = str(tmp_path / "tok.model")
  train_tokenizer(["the cat sits on the mat", "a dog sits on a red mat"] * 30, 40, sp)
  tok = load_tokenizer(sp)
  assert isinstance(tok, Tokenizer) and tok.vocab_size == 40
  assert tok.decode(tok.encode("the cat sits")) == "the cat sits"
  with pytest.raises(KeyError, match="'.txt'"):
    load_tokenizer(str(tmp_path / "vocab.txt"))
