"""WebDataset shards (img2dataset's layout) as manifest lines.

A shard is a tar file whose members are grouped into samples by key: the
member name up to the first dot of its file name (`00000/000000012.jpg`,
`00000/000000012.txt`, `00000/000000012.json` are sample `00000/000000012`).
A sample becomes the JSON object of a manifest line (data/manifest.py): its
`.json` (img2dataset's url, width, status, ...; kept as metadata, its `key`
names the record), its `.txt` as `caption`, and its medium file by extension
(IMAGE / AUDIO / VIDEO_EXTENSIONS) under `image` / `audio` / `video`, holding
the member name. Shards are read with the stdlib's tarfile in stream mode,
local or gs:// (etils). `expand` turns brace patterns
(`shards/{00000..00099}.tar`, `{a,b}`) into the shard list.
"""
from __future__ import annotations

import itertools
import json
import os
import re
import tarfile
from typing import Dict, Iterator, List, Tuple, Union

from metalm_jax import storage
from metalm_jax.data import manifest

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "gif")
AUDIO_EXTENSIONS = ("wav", "flac", "mp3", "ogg")
VIDEO_EXTENSIONS = ("mp4", "webm", "mkv", "avi")
MEDIUM_OF = {**{e: "image" for e in IMAGE_EXTENSIONS}, **{e: "audio" for e in AUDIO_EXTENSIONS},
             **{e: "video" for e in VIDEO_EXTENSIONS}}
_BRACE = re.compile(r"\{([^{}]*)\}")


def _alternatives(body: str) -> List[str]:
  m = re.fullmatch(r"(\d+)\.\.(\d+)", body)
  if m:
    lo, hi = m.groups()
    width = len(lo) if lo.startswith("0") else 0
    return [str(i).zfill(width) for i in range(int(lo), int(hi) + 1)]
  return body.split(",")


def expand(pattern: str) -> List[str]:
  """The paths of a brace pattern, in order: `{000..002}` counts (zero padding
  kept), `{a,b}` lists; several braces make every combination."""
  parts = _BRACE.split(pattern)  # literal, brace body, literal, ...
  choices = [[p] if i % 2 == 0 else _alternatives(p) for i, p in enumerate(parts)]
  return ["".join(c) for c in itertools.product(*choices)]


def samples(path: str) -> Iterator[Tuple[str, Dict[str, bytes]]]:
  """(key, {extension: bytes}) of a shard's samples, in tar order."""
  with storage.path(path).open("rb") as f, tarfile.open(fileobj=f, mode="r|*") as tar:
    key, parts = None, {}
    for member in tar:
      if not member.isfile():
        continue
      folder, name = os.path.split(member.name)
      if "." not in name:
        continue
      stem, ext = name.split(".", 1)
      k = os.path.join(folder, stem)
      if k != key and parts:
        yield key, parts
        parts = {}
      key = k
      parts[ext.lower()] = tar.extractfile(member).read()
    if parts:
      yield key, parts


def sample_object(key: str, parts: Dict[str, bytes], file: str, number: int
                  ) -> Union[Dict, manifest.Problem]:
  """The manifest object of a sample (media fields hold member names), or a Problem."""
  obj = {}
  if "json" in parts:
    try:
      meta = json.loads(parts["json"].decode("utf-8"))
    except ValueError as e:
      return manifest.Problem("malformed_json", file, number, f"{key}.json: {str(e)[:60]}")
    if not isinstance(meta, dict):
      return manifest.Problem("malformed_json", file, number, f"{key}.json is not an object")
    obj.update({k: v for k, v in meta.items() if not (k in manifest.OWN_KEYS and v is None)})
  if "txt" in parts:
    try:
      obj["caption"] = parts["txt"].decode("utf-8").strip()
    except UnicodeDecodeError:
      return manifest.Problem("wrong_type", file, number, f"{key}.txt is not UTF-8")
  media = sorted(ext for ext in parts if ext in MEDIUM_OF)
  if len(media) > 1:
    return manifest.Problem("several_media", file, number, ", ".join(media))
  if media:
    obj[MEDIUM_OF[media[0]]] = f"{key}.{media[0]}"
  obj.setdefault("key", key)
  return obj


def shard_examples(path: str) -> Iterator[Tuple[Union[List[manifest.Example], manifest.Problem],
                                                bytes]]:
  """Per sample of a shard: (its examples or Problem, its medium's bytes or b"")."""
  file = os.path.basename(path)
  for number, (key, parts) in enumerate(samples(path), 1):
    obj = sample_object(key, parts, file, number)
    out = obj if isinstance(obj, manifest.Problem) else manifest.parse_object(obj, file, number)
    data = b""
    if not isinstance(out, manifest.Problem) and out[0].medium:
      data = parts[out[0].path[len(key) + 1:]]
    yield out, data
