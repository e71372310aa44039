"""Your own data sets as sources: a set NAME built into the data dir
(`python -m metalm_jax.data.build --jsonl=NAME:FOLDER`, data/builders/jsonl.py)
is read through the sources NAME_<kind>, one per kind of record its lines
hold, usable in any mixture and by any evaluator:

    NAME_caption (task caption; NAME_caption_prompted, NAME_caption_instruct),
    NAME_vqa (vqa; NAME_vqa_instruct), NAME_text (text),
    NAME_audio_caption, NAME_video_caption (and their _prompted variants),
    NAME_audio_qa, NAME_video_qa.

A run finds NAME in `config.data.data_dir` (DATA_DIR/metalm_jsonl/NAME/1.0.0,
with the build's report in its metadata.json); nothing else names it. A source
of a kind the set has no lines of (or a split it has none of) stops the read
naming the sources it has.
"""
from __future__ import annotations

import functools
import json
import os
import re
from typing import Dict, List, Optional

from metalm_jax import storage
from metalm_jax.data import prepare
from metalm_jax.data import sources as sources_lib
from metalm_jax.data.builders import jsonl
from metalm_jax.data.builders.common import as_str

BUILDER = jsonl.MetalmJsonl.name
VERSION = str(jsonl.MetalmJsonl.VERSION)
NAME = re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)*$")

# source suffix -> (task, record kind = split suffix); longest suffixes first
SUFFIXES = {
    "audio_caption_prompted": ("audio_caption_prompted", "audio_caption"),
    "video_caption_prompted": ("video_caption_prompted", "video_caption"),
    "caption_prompted": ("caption_prompted", "caption"),
    "caption_instruct": ("caption_instruct", "caption"),
    "audio_caption": ("audio_caption", "audio_caption"),
    "video_caption": ("video_caption", "video_caption"),
    "vqa_instruct": ("vqa_instruct", "vqa"),
    "audio_qa": ("audio_qa", "audio_qa"),
    "video_qa": ("video_qa", "video_qa"),
    "caption": ("caption", "caption"),
    "vqa": ("vqa", "vqa"),
    "text": ("text", "text"),
}
MEDIUM = {"caption": "image", "vqa": "image", "audio_caption": "audio",
          "video_caption": "video", "audio_qa": "audio", "video_qa": "video", "text": ""}


def check_name(name: str) -> None:
  """Raises ValueError unless NAME makes unambiguous source names of its own."""
  if not NAME.match(name):
    raise ValueError(f"data set name {name!r}: lower-case letters, digits and single "
                     f"underscores, starting with a letter")
  if any(name.endswith(f"_{m}") or name == m for m in ("audio", "video", "caption", "vqa")):
    raise ValueError(f"data set name {name!r} ends in a word of the source names "
                     f"(audio, video, caption, vqa); pick another")
  taken = [f"{name}_{s}" for s in SUFFIXES if sources_lib.SOURCES.registered(f"{name}_{s}")]
  if taken:
    raise ValueError(f"data set name {name!r} would shadow the built-in sources {taken}")


def split_name(source_name: str):
  """(NAME, suffix) of a user source name, or None."""
  for suffix in SUFFIXES:
    name = source_name[:-len(suffix) - 1]
    if source_name.endswith("_" + suffix) and NAME.match(name):
      return name, suffix
  return None


def builder_dir(data_cfg, name: str) -> str:
  return os.path.join(prepare.data_dir(data_cfg), BUILDER, name, VERSION)


def report(data_cfg, name: str) -> Dict:
  """The build's report (builders/jsonl.py): lines, skipped by reason, named problems, records."""
  path = os.path.join(builder_dir(data_cfg, name), "metadata.json")
  if not storage.exists(path):
    raise FileNotFoundError(
        f"data set {name!r} is not built in {prepare.data_dir(data_cfg)} (no {path}); build it "
        f"with python -m metalm_jax.data.build --data_dir={prepare.data_dir(data_cfg)} "
        f"--world= --jsonl={name}:FOLDER")
  return storage.read_json(path)["report"]


def source_names(data_cfg, name: str) -> List[str]:
  """The plain sources (NAME_<kind>) of a built set, one per kind it has."""
  return [f"{name}_{kind}" for kind in report(data_cfg, name)["kinds"]]


def _read(name: str, kind: str):
  def read(data_cfg, split: str):
    import tensorflow_datasets as tfds
    have = report(data_cfg, name)["records"]
    if split not in have:
      raise ValueError(f"data set {name!r} has no {split!r} records (no "
                       f"{split.rsplit('_' + kind, 1)[0]}.jsonl lines of kind {kind!r}); it has "
                       f"{sorted(have)}, read by the sources {source_names(data_cfg, name)}")
    return tfds.builder_from_directory(builder_dir(data_cfg, name)).as_data_source(split=split)
  return read


def _extract(kind: str):
  medium = MEDIUM[kind]

  def extract(r, rng):
    del rng
    if kind == "text":
      return {"text": as_str(r["text"])}
    out = {medium: r[medium]}
    if kind.endswith("caption"):
      out["captions"] = [as_str(c) for c in r["captions"]]
    else:
      out.update(question=as_str(r["question"]), answers=[as_str(a) for a in r["answers"]])
    return out
  return extract


@functools.lru_cache(maxsize=None)
def source(source_name: str) -> Optional[sources_lib.Source]:
  """The Source of a user source name (sources.SOURCES' fallback), or None."""
  parts = split_name(source_name)
  if parts is None:
    return None
  name, suffix = parts
  task, kind = SUFFIXES[suffix]
  splits = {s: f"{s}_{kind}" for s in ("train", "validation", "test")}
  return sources_lib.Source(task, lambda c: f"{BUILDER}/{name}", splits, _extract(kind),
                            read=_read(name, kind))


def describe(data_cfg, name: str) -> str:
  """One line: the set's records per split and its sources."""
  r = report(data_cfg, name)
  return json.dumps({"records": r["records"], "skipped": {k: v for k, v in r["skipped"].items()
                                                          if v},
                     "sources": source_names(data_cfg, name)}, sort_keys=True)
