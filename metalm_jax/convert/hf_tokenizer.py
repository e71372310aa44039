"""HF tokenizer.json (via the `tokenizers` package) behind the same small
interface as metalm_jax.data.tokenizer.Tokenizer: encode(str) -> list[int],
decode(list[int]) -> str, vocab_size, and the special ids as attributes
(pad, unk, bos, eos, eod, image_start, image_end, audio_start, audio_end,
video_start, video_end; None where the vocabulary has no such token).

Special tokens are found from `tokenizer_config.json` / `special_tokens_map.json`
next to the file when present (HF convention), else by common names. GPT-2's
`<|endoftext|>` serves as bos and eos. `pad` falls back to eos (padding ids
are never read by the model: segment_ids mask them).
"""
from __future__ import annotations

from typing import List, Optional, Sequence

from metalm_jax import optional
from metalm_jax import storage

# Role -> candidate token strings, in order of preference.
CANDIDATES = {
    "bos": ("<s>", "<bos>", "[CLS]", "<|endoftext|>"),
    "eos": ("</s>", "<eos>", "[SEP]", "<|endoftext|>"),
    "pad": ("<pad>", "[PAD]"),
    "unk": ("<unk>", "[UNK]"),
    "image_start": ("<image>",),
    "image_end": ("</image>",),
    "audio_start": ("<audio>",),
    "audio_end": ("</audio>",),
    "video_start": ("<video>",),
    "video_end": ("</video>",),
}
_HF_KEYS = {"bos": "bos_token", "eos": "eos_token", "pad": "pad_token", "unk": "unk_token"}


def _named_specials(directory: str) -> dict:
  """Role -> token string from the HF side files, if any."""
  out = {}
  for fname in ("special_tokens_map.json", "tokenizer_config.json"):
    path = storage.join(directory, fname)
    if not storage.exists(path):
      continue
    data = storage.read_json(path)
    for role, key in _HF_KEYS.items():
      tok = data.get(key)
      if isinstance(tok, dict):
        tok = tok.get("content")
      if isinstance(tok, str) and role not in out:
        out[role] = tok
  return out


class HfTokenizer:
  """A tokenizer.json file; see the module docstring."""

  def __init__(self, path: str):
    _Tok = optional.require("tokenizers", f"tokenizer.json ({path})").Tokenizer
    if not storage.exists(path):
      raise FileNotFoundError(f"tokenizer file {path!r} does not exist")
    self.path = path
    self._tok = _Tok.from_str(storage.read_text(path))
    self.vocab_size = int(self._tok.get_vocab_size(with_added_tokens=True))
    named = _named_specials(str(storage.path(path).parent))
    for role, cands in CANDIDATES.items():
      ids = [self._tok.token_to_id(t) for t in ((named[role],) if role in named else cands)]
      setattr(self, role, next((int(i) for i in ids if i is not None), None))
    if self.pad is None:
      self.pad = self.eos if self.eos is not None else 0
    self.eod = self.eos
    self.special_ids = frozenset(
        int(getattr(self, role)) for role in ("pad", "eod", *CANDIDATES)
        if getattr(self, role) is not None)

  def encode(self, text: str) -> List[int]:
    return list(self._tok.encode(text, add_special_tokens=False).ids)

  def decode(self, ids: Sequence[int]) -> str:
    """Text of the ids; special tokens are dropped."""
    return self._tok.decode([int(i) for i in ids if int(i) not in self.special_ids],
                            skip_special_tokens=True)

  def token_to_id(self, token: str) -> Optional[int]:
    return self._tok.token_to_id(token)

  def id_to_piece(self, i: int) -> str:
    return self._tok.id_to_token(int(i))
