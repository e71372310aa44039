"""Generated ids -> the answer text a caller gets: decoded and stripped as
the Predictor does (`tokenizer.decode(ids).strip()`), cut before the first
stop sequence, and split into the pieces a stream sends."""
from __future__ import annotations

import dataclasses
from typing import List, Sequence


@dataclasses.dataclass(frozen=True)
class Answer:
  text: str
  tokens: int    # generated tokens it took (up to the stop sequence, eos excluded)
  finish: str    # "stop" (eos or a stop sequence) or "length"
  ids: List[int]


def _text(tok, ids) -> str:
  return tok.decode(list(ids)).strip()


def answer(tok, ids: Sequence[int], finish: str, stops: Sequence[str]) -> Answer:
  """The answer for ids ending as `finish`, cut at the earliest stop sequence."""
  ids = list(ids)
  text = _text(tok, ids)
  cuts = [text.find(s) for s in stops if s in text]
  if not cuts:
    return Answer(text, len(ids), finish, ids)
  text = text[:min(cuts)]
  used = next(k for k in range(1, len(ids) + 1)
              if any(s in _text(tok, ids[:k]) for s in stops))
  return Answer(text, used, "stop", ids[:used])


def pieces(tok, ans: Answer) -> List[str]:
  """Consecutive pieces of ans.text, one per token where the decoded prefix
  grows (their concatenation is ans.text)."""
  out, sent = [], ""
  for k in range(1, len(ans.ids) + 1):
    cur = _text(tok, ans.ids[:k])
    if len(cur) > len(sent) and cur.startswith(sent) and ans.text.startswith(cur):
      out.append(cur[len(sent):])
      sent = cur
  if len(ans.text) > len(sent):
    out.append(ans.text[len(sent):])
  return out
