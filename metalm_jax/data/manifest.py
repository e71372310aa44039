"""JSONL manifests of your own data: one example per line, checked line by line.

A line is a JSON object with one medium and a target, or text alone:

    {"image": "img/0001.jpg", "caption": "a red circle."}
    {"image": "img/0001.jpg", "captions": ["a red circle.", "one circle."]}
    {"audio": "clips/7.wav", "question": "how many sounds?", "answers": ["2", "two"]}
    {"text": "A paragraph.\\n\\nAnother paragraph."}

The medium is `image`, `audio` or `video`: a path relative to the manifest's
folder, an absolute path or a gs:// URL. A line with a medium needs `caption`
(a string) / `captions` (a list of strings) and/or `question` with `answers`
(a list of strings); a line with neither medium needs `text`. `key` (a string
or an integer) names the example (default: its line number) and must be
unique within its file. Every other key is kept as metadata (a JSON string).

`parse_line` returns the line's examples or a `Problem` (reason, file, line);
REASONS lists every reason a line is skipped for. The builder
(data/builders/jsonl.py) adds the media reasons when it reads the files.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Dict, List, Tuple, Union

MEDIA = ("image", "audio", "video")
TARGET_KEYS = ("caption", "captions", "question", "answers", "text")
OWN_KEYS = MEDIA + TARGET_KEYS + ("key",)

# Every reason a line is skipped (build counts and names each).
REASONS = ("malformed_json", "wrong_type", "missing_target", "empty_target",
           "several_media", "duplicate_key", "missing_medium", "unreadable_medium",
           "undecodable_image")

# (target, medium) -> the kind of record (one split per kind, one source each)
KINDS = {("caption", "image"): "caption", ("caption", "audio"): "audio_caption",
         ("caption", "video"): "video_caption", ("vqa", "image"): "vqa",
         ("vqa", "audio"): "audio_qa", ("vqa", "video"): "video_qa", ("text", ""): "text"}


@dataclasses.dataclass(frozen=True)
class Problem:
  reason: str   # one of REASONS
  file: str     # the manifest's file name (e.g. train.jsonl)
  line: int     # 1-based line number
  detail: str = ""

  def describe(self) -> str:
    return f"{self.file}:{self.line}: {self.reason}" + (f" ({self.detail})" if self.detail else "")


@dataclasses.dataclass(frozen=True)
class Example:
  """One record to build: `kind` (KINDS), the medium's kind and path ("" for
  text), the target fields and the metadata JSON."""
  kind: str
  key: str      # the line's `key`, "" if it has none
  file: str
  line: int
  medium: str = ""
  path: str = ""
  captions: Tuple[str, ...] = ()
  question: str = ""
  answers: Tuple[str, ...] = ()
  text: str = ""
  metadata: str = "{}"


def _strings(value) -> bool:
  return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _typed(obj: Dict[str, Any]) -> str:
  """"" if every known key has its type, else a description of the first that has not."""
  want = {"caption": (str,), "question": (str,), "text": (str,), "key": (str, int)}
  for k in MEDIA:
    want[k] = (str,)
  for k, types in want.items():
    if k in obj and (not isinstance(obj[k], types) or isinstance(obj[k], bool)):
      return f"{k!r} must be {' or '.join(t.__name__ for t in types)}, got {type(obj[k]).__name__}"
  for k in ("captions", "answers"):
    if k in obj and not _strings(obj[k]):
      return f"{k!r} must be a list of strings"
  return ""


def parse_line(line: str, file: str, number: int) -> Union[List[Example], Problem]:
  """The examples of manifest line `number` (1-based) of `file`, or why it is skipped."""
  bad = lambda reason, detail="": Problem(reason, file, number, detail)  # noqa: E731
  try:
    obj = json.loads(line)
  except ValueError as e:
    return bad("malformed_json", str(e)[:80])
  return parse_object(obj, file, number)


def parse_object(obj: Any, file: str, number: int) -> Union[List[Example], Problem]:
  """`parse_line` after the JSON decoding (also for WebDataset samples, whose
  fields come from several files)."""
  bad = lambda reason, detail="": Problem(reason, file, number, detail)  # noqa: E731
  if not isinstance(obj, dict):
    return bad("malformed_json", f"a line must be a JSON object, got {type(obj).__name__}")
  why = _typed(obj)
  if why:
    return bad("wrong_type", why)
  media = [m for m in MEDIA if m in obj]
  if len(media) > 1:
    return bad("several_media", ", ".join(media))
  medium = media[0] if media else ""
  captions = ([obj["caption"]] if "caption" in obj else []) + list(obj.get("captions", []))
  has_vqa = "question" in obj or "answers" in obj
  targets = []
  if medium:
    if "caption" in obj or "captions" in obj:
      targets.append("caption")
    if has_vqa:
      targets.append("vqa")
  elif "text" in obj:
    targets.append("text")
  if not targets:
    return bad("missing_target", "a medium needs caption(s) or question + answers" if medium
               else "no medium and no text")
  if medium and not obj[medium].strip():
    return bad("empty_target", f"{medium!r} is empty")
  if "caption" in targets and not [c for c in captions if c.strip()]:
    return bad("empty_target", "no non-empty caption")
  if "vqa" in targets:
    if not obj.get("question", "").strip() or not [a for a in obj.get("answers", []) if a.strip()]:
      return bad("empty_target", "question and answers must both be non-empty")
  if "text" in targets and not obj["text"].strip():
    return bad("empty_target", "'text' is empty")
  key = str(obj["key"]) if "key" in obj else ""  # the builder names unkeyed lines file:line
  meta = json.dumps({k: v for k, v in obj.items() if k not in OWN_KEYS}, sort_keys=True)
  common = dict(key=key, file=file, line=number, medium=medium,
                path=obj.get(medium, ""), metadata=meta)
  out = []
  for target in targets:
    if target == "caption":
      out.append(Example(KINDS[(target, medium)],
                         captions=tuple(c.strip() for c in captions if c.strip()), **common))
    elif target == "vqa":
      out.append(Example(KINDS[(target, medium)], question=obj["question"].strip(),
                         answers=tuple(a.strip() for a in obj["answers"] if a.strip()),
                         **common))
    else:
      out.append(Example("text", text=obj["text"], **common))
  return out
