"""HF tokenizer.json (via the `tokenizers` package) behind the same small
interface as metalm_jax.data.tokenizer.Tokenizer: encode(str) -> list[int],
decode(list[int]) -> str, vocab_size, and the special ids as attributes
(pad, unk, bos, eos, eod, eop, image_start, image_end, audio_start,
audio_end, video_start, video_end; None where the vocabulary has no such
token).

Special tokens are found from `tokenizer_config.json` / `special_tokens_map.json`
next to the file when present (HF convention), else by common names. GPT-2's
`<|endoftext|>` serves as bos and eos. `pad` falls back to eos (padding ids
are never read by the model: segment_ids mask them).

`add_project_specials` gives a tokenizer.json the tokens the pipeline needs
and it lacks (`PROJECT_SPECIALS`: `<eop>`, the image / audio / video
brackets, and `<s>` / `</s>` when it has no bos / eos of its own) as new
special tokens after its last id; existing ids do not change. The decoder's
matching embedding rows are added by `metalm_jax/convert/hf_vocab.py`.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, List, Optional, Sequence

from metalm_jax import optional
from metalm_jax import storage
from metalm_jax.data.tokenizer import MEDIA_SYMBOLS

# Role -> the token `add_project_specials` adds when the tokenizer has none
# for that role (in this order, so the new ids are deterministic).
PROJECT_SPECIALS = {"bos": "<s>", "eos": "</s>", "eop": "<eop>",
                    "image_start": "<image>", "image_end": "</image>", **MEDIA_SYMBOLS}
# Role -> candidate token strings, in order of preference.
CANDIDATES = {
    "bos": ("<s>", "<bos>", "[CLS]", "<|endoftext|>", "<|begin_of_text|>"),
    "eos": ("</s>", "<eos>", "[SEP]", "<|endoftext|>", "<|end_of_text|>"),
    "pad": ("<pad>", "[PAD]"),
    "unk": ("<unk>", "[UNK]"),
    **{role: (tok,) for role, tok in PROJECT_SPECIALS.items() if role not in ("bos", "eos")},
}
_HF_KEYS = {"bos": "bos_token", "eos": "eos_token", "pad": "pad_token", "unk": "unk_token"}
# HF side files that name the special tokens; they travel with tokenizer.json.
SIDE_FILES = ("special_tokens_map.json", "tokenizer_config.json")


def _named_specials(directory: str) -> dict:
  """Role -> token string from the HF side files, if any."""
  out = {}
  for fname in SIDE_FILES:
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


def side_files(path: str) -> List[str]:
  """The HF side files present next to tokenizer file `path`."""
  directory = str(storage.path(path).parent)
  return [f for f in SIDE_FILES if storage.exists(storage.join(directory, f))]


def _tokenizers_lib(path: str):
  return optional.require("tokenizers", f"tokenizer.json ({path})")


def _read(path: str):
  lib = _tokenizers_lib(path)
  if not storage.exists(path):
    raise FileNotFoundError(f"tokenizer file {path!r} does not exist")
  return lib.Tokenizer.from_str(storage.read_text(path))


class HfTokenizer:
  """A tokenizer.json file; see the module docstring."""

  def __init__(self, path: str):
    self.path = path
    self._tok = _read(path)
    self.vocab_size = int(self._tok.get_vocab_size(with_added_tokens=True))
    named = _named_specials(str(storage.path(path).parent))
    for role, cands in CANDIDATES.items():
      ids = [self._tok.token_to_id(t) for t in ((named[role],) if role in named else cands)]
      setattr(self, role, next((int(i) for i in ids if i is not None), None))
    self.missing_specials = tuple(role for role in PROJECT_SPECIALS if getattr(self, role) is None)
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


@dataclasses.dataclass(frozen=True)
class AddedSpecials:
  """What `add_project_specials` did: `tokens` maps each added token to its
  new id; ids below `old_size` (the original size) are the original ones."""
  tokens: Dict[str, int]
  old_size: int
  new_size: int


def add_project_specials(src: str, dst: str) -> AddedSpecials:
  """Writes tokenizer.json `src` with the `PROJECT_SPECIALS` it lacks added
  (as special tokens, ids from its size on) to `dst` (local or remote; a
  copy when nothing is missing). Roles are resolved as `HfTokenizer` does,
  from the side files next to `src`."""
  have = HfTokenizer(src)
  tok = have._tok
  old_size = max(tok.get_vocab(with_added_tokens=True).values(), default=-1) + 1
  todo = [PROJECT_SPECIALS[role] for role in have.missing_specials]
  if not todo:  # the file as it is, byte for byte
    if storage.path(src) != storage.path(dst):
      storage.copy(src, dst)
    return AddedSpecials({}, old_size, old_size)
  lib = _tokenizers_lib(src)
  tok.add_special_tokens([lib.AddedToken(t, special=True, normalized=False) for t in todo])
  added = {t: tok.token_to_id(t) for t in todo}
  if sorted(added.values()) != list(range(old_size, old_size + len(todo))):
    raise ValueError(f"{src}: the added special tokens got ids {added}, not the ids after the "
                     f"last one ({old_size}...)")
  storage.write_text(dst, tok.to_str(pretty=True))
  return AddedSpecials(added, old_size, old_size + len(todo))
