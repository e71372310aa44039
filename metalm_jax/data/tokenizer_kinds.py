"""Tokenizer files by kind, picked by the file's suffix:

    .model  SentencePiece (data/tokenizer.py `Tokenizer`); the decoder's
            vocab_size must equal its size (training pads it to that size)
    .json   HF tokenizer.json (data/hf_tokenizer.py `HfTokenizer`); the
            decoder may have more rows than it has tokens (HF models often
            round the embedding up, e.g. Qwen2)

Every kind has the same interface (encode, decode, vocab_size and the special
ids as attributes). Loading a file never builds a data set.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

from metalm_jax import storage
from metalm_jax.data import hf_tokenizer
from metalm_jax.data import tokenizer as sp_tokenizer
from metalm_jax.registry import Registry


@dataclasses.dataclass(frozen=True)
class Kind:
  name: str
  load: Callable[[str], Any]   # path (local or remote) -> tokenizer
  exact_vocab: bool            # decoder vocab_size == tokenizer size (else >=)


# File suffix -> Kind.
KINDS = Registry("tokenizer file suffix")
KINDS.register(".model")(Kind("sentencepiece", sp_tokenizer.Tokenizer.from_file, True))
KINDS.register(".json")(Kind("HF tokenizer.json", hf_tokenizer.HfTokenizer, False))


def kind_of(path: str) -> Kind:
  return KINDS.get(storage.path(path).suffix)


def load(path: str):
  """The tokenizer in file `path`, of the kind its suffix names."""
  return kind_of(path).load(path)


def check_vocab(tok, path: str, vocab_size: int, field: str) -> None:
  """Raises unless tokenizer `tok` (from `path`) fits a decoder of
  `vocab_size` rows (`field` names that setting in errors)."""
  kind = kind_of(path)
  if kind.exact_vocab and tok.vocab_size != vocab_size:
    raise ValueError(f"tokenizer {path!r} ({kind.name}) has vocab_size={tok.vocab_size}, but "
                     f"{field}={vocab_size}")
  if tok.vocab_size > vocab_size:
    raise ValueError(f"tokenizer {path!r} ({kind.name}) has vocab_size={tok.vocab_size} > "
                     f"{field}={vocab_size}")
