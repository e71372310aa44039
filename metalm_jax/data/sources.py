"""Named data sources: which TFDS data set a mixture entry reads, which task
lays it out, and how its records map to the task's canonical fields.

Canonical fields per task:
    caption: image (bytes or array), captions (list[str])
    vqa:     image, question (str), answers (list[str], VQAv2-style 10)
    text:    text (str; paragraphs separated by blank lines)
    nli:     premise, hypothesis (str), label (0 entailment, 1 neutral,
             2 contradiction; anything else is skipped and counted)
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, Mapping

import numpy as np

from metalm_jax.data.builders.common import as_str
from metalm_jax.registry import Registry

SOURCES = Registry("data source")


@dataclasses.dataclass(frozen=True)
class Source:
  task: str
  dataset: Callable[[Any], str]        # data_cfg -> tfds name ("name/config")
  splits: Mapping[str, str]            # pipeline split -> tfds split
  extract: Callable[[Mapping[str, Any], np.random.Generator], Dict[str, Any]]
  embedded: bool = False               # the embedded world (prepared on first use)
  module: str = ""                     # module defining a catalogue builder (imported first)


def _world_name(data_cfg) -> str:
  return f"metalm_world/{data_cfg.world}"


_WORLD_SPLITS = {"train": "train", "validation": "validation", "test": "test_heldout",
                 "test_heldout": "test_heldout"}


def _captions(r, rng):
  return {"image": r["image"], "captions": [as_str(c) for c in r["captions"]]}


def _world_vqa(r, rng):
  qs = list(r["questions"])
  if not qs:
    return {"image": r["image"], "question": "", "answers": []}
  k = int(rng.integers(len(qs)))
  return {"image": r["image"], "question": as_str(qs[k]),
          "answers": [as_str(a) for a in np.asarray(r["answers"])[k]]}


def _vqav2(r, rng):
  return {"image": r["image"], "question": as_str(r["question"]),
          "answers": [as_str(a) for a in r["answers"]]}


def _document(field):
  def extract(r, rng):
    return {"text": as_str(r[field])}
  return extract


def _nli(r, rng):
  return {"premise": as_str(r["premise"]), "hypothesis": as_str(r["hypothesis"]),
          "label": int(r["label"])}


def register(name: str, source: Source) -> None:
  SOURCES.register(name)(source)


register("world_caption", Source("caption", _world_name, _WORLD_SPLITS, _captions, True))
register("world_vqa", Source("vqa", _world_name, _WORLD_SPLITS, _world_vqa, True))
register("world_text", Source("text", _world_name, _WORLD_SPLITS, _document("document"), True))
register("world_nli", Source("nli", _world_name, _WORLD_SPLITS, _nli, True))
register("coco_caption", Source("caption", lambda c: "metalm_coco_karpathy",
                                {"train": "train", "validation": "validation", "test": "test"},
                                _captions))
register("vqav2", Source("vqa", lambda c: "metalm_vqav2",
                         {"train": "train", "validation": "validation"}, _vqav2))
register("text_corpus", Source("text", lambda c: "metalm_text_corpus",
                               {"train": "train", "validation": "validation"},
                               _document("text")))
register("mnli", Source("nli", lambda c: "glue/mnli",
                        {"train": "train", "validation": "validation_matched",
                         "test": "validation_mismatched"}, _nli,
                        module="tensorflow_datasets.text.glue"))


def tfds_split(source_name: str, split: str) -> str:
  src = SOURCES.get(source_name)
  if split not in src.splits:
    raise ValueError(f"split={split!r} is not available for data source {source_name!r}; "
                     f"known: {sorted(src.splits)}")
  return src.splits[split]
