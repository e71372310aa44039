"""SentencePiece tokenizer with MetaLM's special tokens.

Fixed ids: pad 0, unk 1, bos 2 (`<s>`), eod 3 (`</s>`, also eos), then the
user symbols `<eop>` (end of paragraph), `<image>`, `</image>`, `<sep>`,
reserved `<extra_0..7>` tokens, then the audio and video brackets `<audio>`,
`</audio>`, `<video>`, `</video>` (after the extras, so the ids above stay
those of older files; a tokenizer file without them loads with those ids None,
and a task that docks audio or video says so). After training, the model file is padded with
further `<extra_K>` pieces so its size equals the requested vocabulary exactly
(the decoder's vocab_size), however small the corpus.

This module only reads and trains tokenizer files; it never builds data sets.
A run's tokenizer (the embedded world's, prepared on first use) comes from
`metalm_jax.data.prepare.load_tokenizer(config)`.

Train on a corpus of your own:
    python -m metalm_jax.data.tokenizer --input=a.txt,b.txt --vocab_size=32000 \
        --output=/path/tok.model
"""
from __future__ import annotations

import os
import tempfile
from typing import Iterable, List, Sequence

import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as sp_pb2

SPECIAL_SYMBOLS = ("<eop>", "<image>", "</image>", "<sep>")
NUM_RESERVED = 8  # <extra_0> ... <extra_7> always present
# Brackets of the docked audio and video items, after the reserved extras.
MEDIA_SYMBOLS = {"audio_start": "<audio>", "audio_end": "</audio>",
                 "video_start": "<video>", "video_end": "</video>"}


class Tokenizer:
  """encode(str) -> list[int], decode(list[int]) -> str, vocab_size and the
  special ids as attributes. Picklable (keeps the serialized model)."""

  def __init__(self, model_proto: bytes):
    self._proto = model_proto
    self._sp = spm.SentencePieceProcessor()
    self._sp.LoadFromSerializedProto(model_proto)
    self.vocab_size = int(self._sp.GetPieceSize())
    self.pad = self._sp.pad_id()
    self.unk = self._sp.unk_id()
    self.bos = self._sp.bos_id()
    self.eod = self._sp.eos_id()
    self.eos = self.eod
    self.eop = self._id("<eop>")
    self.image_start = self._id("<image>")
    self.image_end = self._id("</image>")
    self.sep = self._id("<sep>")
    self.extras = [self._id(f"<extra_{k}>") for k in range(NUM_RESERVED)]
    for role, piece in MEDIA_SYMBOLS.items():
      setattr(self, role, self._optional_id(piece))
    media = [getattr(self, role) for role in MEDIA_SYMBOLS]
    self.special_ids = frozenset(
        [self.pad, self.unk, self.bos, self.eod, self.eop, self.image_start, self.image_end,
         self.sep] + self.extras + [i for i in media if i is not None])

  def _optional_id(self, piece: str):
    i = self._sp.PieceToId(piece)
    return None if i == self._sp.unk_id() else int(i)

  def _id(self, piece: str) -> int:
    i = self._sp.PieceToId(piece)
    if i == self._sp.unk_id():
      raise ValueError(f"tokenizer model lacks the special piece {piece!r}")
    return int(i)

  @classmethod
  def from_file(cls, path: str) -> "Tokenizer":
    """A .model file, local or remote (gs://)."""
    from metalm_jax import storage
    return cls(storage.read_bytes(path))

  def encode(self, text: str) -> List[int]:
    return list(self._sp.EncodeAsIds(text))

  def decode(self, ids: Sequence[int]) -> str:
    """Text of the ids; special tokens and pads are dropped."""
    return self._sp.DecodeIds([int(i) for i in ids if int(i) not in self.special_ids])

  def id_to_piece(self, i: int) -> str:
    return self._sp.IdToPiece(int(i))

  def __getstate__(self):
    return {"proto": self._proto}

  def __setstate__(self, state):
    self.__init__(state["proto"])


def train_tokenizer(texts: Iterable[str], vocab_size: int, output: str,
                    model_type: str = "unigram", max_sentences: int = 2_000_000) -> Tokenizer:
  """Trains on `texts` (one sentence or line each) and writes `output`.

  The trained model is padded with `<extra_K>` pieces to exactly vocab_size.
  """
  min_size = 4 + len(SPECIAL_SYMBOLS) + NUM_RESERVED + len(MEDIA_SYMBOLS) + 8
  if vocab_size < min_size:
    raise ValueError(f"vocab_size={vocab_size} is too small (need >= {min_size})")
  from metalm_jax import storage
  # Local by intent: SentencePiece's trainer reads and writes local files only;
  # the finished model goes to `output` (local or remote) below.
  with tempfile.TemporaryDirectory() as tmp:
    corpus = os.path.join(tmp, "corpus.txt")
    n = 0
    with open(corpus, "w", encoding="utf-8") as f:
      for t in texts:
        t = " ".join(t.split())
        if t:
          f.write(t + "\n")
          n += 1
    if n == 0:
      raise ValueError("train_tokenizer: the corpus has no non-empty text")
    prefix = os.path.join(tmp, "sp")
    spm.SentencePieceTrainer.Train(
        input=corpus, model_prefix=prefix, vocab_size=vocab_size, model_type=model_type,
        hard_vocab_limit=False, character_coverage=1.0, pad_id=0, unk_id=1, bos_id=2, eos_id=3,
        user_defined_symbols=list(SPECIAL_SYMBOLS) + [f"<extra_{k}>" for k in range(NUM_RESERVED)]
        + list(MEDIA_SYMBOLS.values()),
        input_sentence_size=max_sentences, shuffle_input_sentence=True, num_threads=1,
        minloglevel=2, byte_fallback=False)
    proto = sp_pb2.ModelProto()
    with open(prefix + ".model", "rb") as f:
      proto.ParseFromString(f.read())
  k = NUM_RESERVED
  while len(proto.pieces) < vocab_size:
    piece = proto.pieces.add()
    piece.piece = f"<extra_{k}>"
    piece.score = 0.0
    piece.type = sp_pb2.ModelProto.SentencePiece.USER_DEFINED
    k += 1
  data = proto.SerializeToString()
  storage.write_bytes(output, data)
  tok = Tokenizer(data)
  if tok.vocab_size != vocab_size:
    raise ValueError(f"trained tokenizer has {tok.vocab_size} pieces, wanted {vocab_size}")
  return tok


def _read_lines(paths: Sequence[str]) -> Iterable[str]:
  import json
  from metalm_jax import storage
  for p in paths:
    text = storage.read_bytes(p).decode("utf-8", errors="replace")
    for line in text.splitlines():
      if p.endswith(".jsonl"):
        line = json.loads(line).get("text", "") if line.strip() else ""
      yield from line.splitlines()


def main(argv):
  del argv
  from absl import flags
  f = flags.FLAGS
  paths = [p for p in f.input.split(",") if p]
  tok = train_tokenizer(_read_lines(paths), f.vocab_size, f.output, f.model_type)
  print(f"wrote {f.output}: vocab_size={tok.vocab_size}")


if __name__ == "__main__":
  from absl import flags
  from metalm_jax import absl_run
  flags.DEFINE_string("input", "", "comma-separated .txt / .jsonl files")
  flags.DEFINE_integer("vocab_size", 32000, "exact vocabulary size")
  flags.DEFINE_string("output", "tokenizer.model", "output .model path")
  flags.DEFINE_string("model_type", "unigram", "unigram or bpe")
  absl_run.run(main)
