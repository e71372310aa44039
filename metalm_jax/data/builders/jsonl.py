"""Your own data from JSONL manifests (`metalm_jsonl/NAME`, one config per data set).

    python -m metalm_jax.data.build --data_dir=D --world= --jsonl=NAME:FOLDER

    python -m metalm_jax.data.build --data_dir=D --world= \
        --webdataset='NAME:train=shards/{00000..00099}.tar;validation=shards/val.tar'

FOLDER (local or gs://) holds train.jsonl and optionally validation.jsonl and
test.jsonl, one example per line (data/manifest.py has the format); or
WebDataset shards in img2dataset's layout give the lines, one per sample
(data/webdataset.py; `file` is then the shard, `line` the sample number). Each
manifest split becomes one TFDS split per kind of record its lines hold,
`<split>_<kind>` (train_caption, train_vqa, validation_caption, train_text,
train_audio_caption, ...), so each source (data/user_sets.py: NAME_caption,
NAME_vqa, NAME_text, ...) reads its own split.

Records: key, file (`train.jsonl:12`), image / audio / video (the medium's
file bytes, b"" for the others; decoded by the pipeline), captions, question,
answers, text, metadata (the line's other keys as a JSON string).

Bad input: every line is checked before anything is written (JSON, types,
targets, duplicate keys; the medium read and an image decoded with PIL); a
bad line is skipped, logged with file and line number, counted by reason
(manifest.REASONS) and named in the data set's metadata (`metadata.json`
next to dataset_info.json: `report`, read back by `user_sets.report`). More
than `max_bad_fraction` bad lines fails the build with a summary (nothing is
written: TFDS prepares in a temporary folder and renames it at the end, so an
interrupted build also restarts from scratch). Records are keyed by the line's
`key` (default `file:line`), so a rebuild writes identical records in the
same order. Media files are read twice (checked, then written); the check
reads `read_threads` files at a time.
"""
from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import io
import os
import re
from typing import Dict, List, Optional, Tuple

import tensorflow_datasets as tfds
from absl import logging

from metalm_jax import storage
from metalm_jax.data import manifest
from metalm_jax.data import webdataset
from metalm_jax.data.builders import common

SPLITS = ("train", "validation", "test")
MAX_NAMED = 1000  # problems named in the metadata (all are counted)
MAX_LOGGED = 200  # problems logged one by one


@dataclasses.dataclass
class JsonlConfig(tfds.core.BuilderConfig):
  folder: str = ""                 # holds train.jsonl (validation.jsonl, test.jsonl)
  shards: str = ""                 # or WebDataset shards: PATTERN, or split=PATTERN;...
  max_bad_fraction: float = 0.1    # more bad lines than this fails the build
  read_threads: int = 8            # media files checked at a time


def medium_path(folder: str, path: str) -> str:
  """A manifest's medium path: absolute and URLs as they are, else under `folder`."""
  if storage.is_remote(path) or os.path.isabs(path):
    return path
  return storage.join(folder, path)


def check_medium(folder: str, ex: manifest.Example) -> Optional[manifest.Problem]:
  """None if the example's medium reads (and an image decodes), else its Problem."""
  if not ex.medium:
    return None
  bad = lambda reason, detail: manifest.Problem(reason, ex.file, ex.line, detail)  # noqa: E731
  path = medium_path(folder, ex.path)
  try:
    data = storage.read_bytes(path)
  except FileNotFoundError:
    return bad("missing_medium", ex.path)
  except Exception as e:  # noqa: BLE001  a directory, permissions, a bucket error
    return bad("unreadable_medium", f"{ex.path}: {type(e).__name__}")
  return check_bytes(ex, data)


def check_bytes(ex: manifest.Example, data: bytes) -> Optional[manifest.Problem]:
  """None if the medium's bytes are usable (an image decodes with PIL), else its Problem."""
  if ex.medium == "image":
    from PIL import Image
    try:
      with Image.open(io.BytesIO(data)) as im:
        im.load()
    except Exception as e:  # noqa: BLE001  PIL raises many kinds
      return manifest.Problem("undecodable_image", ex.file, ex.line,
                              f"{ex.path}: {type(e).__name__}")
  return None


def read_manifest(folder: str, split: str) -> Tuple[List[manifest.Example],
                                                    List[manifest.Problem], int]:
  """(examples, problems, non-blank lines) of FOLDER/<split>.jsonl, media not checked."""
  name = f"{split}.jsonl"
  examples, problems, lines, seen = [], [], 0, set()
  for number, line in enumerate(storage.read_text(storage.join(folder, name)).splitlines(), 1):
    if not line.strip():
      continue
    lines += 1
    out = manifest.parse_line(line, name, number)
    if isinstance(out, manifest.Problem):
      problems.append(out)
      continue
    key = out[0].key or f"{name}:{number}"
    if key in seen:
      problems.append(manifest.Problem("duplicate_key", name, number, key))
      continue
    seen.add(key)
    examples += [dataclasses.replace(ex, key=key) for ex in out]
  return examples, problems, lines


def check(folder: str, split: str, threads: int):
  """(good examples, problems, lines) of a manifest split, media checked."""
  examples, problems, lines = read_manifest(folder, split)
  by_line = {}
  for ex in examples:  # one check per line (a line may give a caption and a vqa record)
    by_line.setdefault(ex.line, ex)
  with concurrent.futures.ThreadPoolExecutor(max(1, threads)) as pool:
    found = dict(zip(by_line, pool.map(lambda ex: check_medium(folder, ex), by_line.values())))
  problems += [p for p in found.values() if p is not None]
  problems.sort(key=lambda p: p.line)
  return [ex for ex in examples if found[ex.line] is None], problems, lines


def shard_splits(spec: str) -> Dict[str, List[str]]:
  """{split: shard paths} of a --webdataset spec: a brace pattern (train), or
  `train=PATTERN;validation=PATTERN;...`."""
  items = [x for x in spec.split(";") if x]
  named = dict(x.split("=", 1) for x in items if re.match(r"^(train|validation|test)=", x))
  if len(named) != len(items):
    if len(items) > 1:
      raise ValueError(f"webdataset spec {spec!r}: a pattern, or split=pattern;... "
                       f"with splits of {SPLITS}")
    named = {"train": items[0]}
  return {split: webdataset.expand(p) for split, p in named.items()}


def check_shards(paths: List[str]):
  """(good examples, problems, samples) of a split's shards, media checked."""
  good, problems, lines, seen = [], [], 0, set()
  for path in paths:
    for out, data in webdataset.shard_examples(path):
      lines += 1
      if not isinstance(out, manifest.Problem):
        ex = out[0]
        if ex.key in seen:
          out = manifest.Problem("duplicate_key", ex.file, ex.line, ex.key)
        else:
          seen.add(ex.key)
          out = check_bytes(ex, data) or out
      if isinstance(out, manifest.Problem):
        problems.append(out)
      else:
        good += out
  return good, problems, lines


def summary(report: Dict) -> str:
  counts = ", ".join(f"{k}={v}" for k, v in report["skipped"].items() if v) or "none"
  return (f"{report['bad_lines']} of {report['lines']} lines skipped ({counts}); "
          f"records per split: {report['records']}")


class MetalmJsonl(tfds.core.GeneratorBasedBuilder):
  """Examples from JSONL manifests (data/manifest.py) and their media files."""

  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return self.dataset_info_from_configs(features=tfds.features.FeaturesDict({
        "key": tfds.features.Text(),
        "file": tfds.features.Text(),
        "image": common.encoded_file(),
        "audio": common.encoded_file(),
        "video": common.encoded_file(),
        "captions": common.text_list(),
        "question": tfds.features.Text(),
        "answers": common.text_list(),
        "text": tfds.features.Text(),
        "metadata": tfds.features.Text(),
    }), metadata=tfds.core.MetadataDict())

  def _split_generators(self, dl_manager):
    del dl_manager
    c = self.builder_config
    if c.shards:
      shards = shard_splits(c.shards)
      present = [s for s in SPLITS if s in shards]
    else:
      present = [s for s in SPLITS if storage.exists(storage.join(c.folder, f"{s}.jsonl"))]
    if "train" not in present:
      raise ValueError(f"{c.shards or c.folder}: no train split (train.jsonl, or train shards)")
    out, problems, lines, records = {}, [], 0, {}
    for split in present:
      if c.shards:
        good, bad, n = check_shards(shards[split])
      else:
        good, bad, n = check(c.folder, split, c.read_threads)
      problems += bad
      lines += n
      by_kind = collections.defaultdict(list)
      for ex in good:
        by_kind[ex.kind].append(ex)
      for kind in sorted(by_kind):
        out[f"{split}_{kind}"] = (
            self._generate_shard_examples(shards[split], kind, by_kind[kind]) if c.shards
            else self._generate_examples(c.folder, by_kind[kind]))
        records[f"{split}_{kind}"] = len(by_kind[kind])
    self._report(problems, lines, records)
    if not out:
      raise ValueError(f"{c.shards or c.folder}: no usable line "
                       f"({summary(self.info.metadata['report'])})")
    return out

  def _report(self, problems: List[manifest.Problem], lines: int, records: Dict) -> None:
    """Logs each problem, puts the report in the metadata; fails past the bad fraction."""
    c = self.builder_config
    skipped = {r: 0 for r in manifest.REASONS}
    for p in problems:
      skipped[p.reason] += 1
    report = {"lines": lines, "bad_lines": len(problems), "skipped": skipped,
              "records": records, "kinds": sorted({k.split("_", 1)[1] for k in records}),
              "problems": [dataclasses.asdict(p) for p in problems[:MAX_NAMED]],
              "problems_named": min(len(problems), MAX_NAMED)}
    for p in problems[:MAX_LOGGED]:
      logging.warning("jsonl %s: skipped %s", c.name, p.describe())
    if len(problems) > MAX_LOGGED:
      logging.warning("jsonl %s: ... and %d more skipped lines (counted in the metadata)",
                      c.name, len(problems) - MAX_LOGGED)
    self.info.metadata["report"] = report
    logging.info("jsonl %s: %s", c.name, summary(report))
    if lines and len(problems) > c.max_bad_fraction * lines:
      raise ValueError(
          f"data set {c.name!r} from {c.folder}: {len(problems)} of {lines} lines are bad, more "
          f"than max_bad_fraction={c.max_bad_fraction}: {summary(report)}; first: "
          + "; ".join(p.describe() for p in problems[:5]))

  def _generate_examples(self, folder, examples):
    for ex in examples:
      data = storage.read_bytes(medium_path(folder, ex.path)) if ex.medium else b""
      yield ex.key, record(ex, data)

  def _generate_shard_examples(self, paths, kind, examples):
    """The checked `examples` of `kind`, their media read again from the shards."""
    keep = {(ex.file, ex.line) for ex in examples}
    for path in paths:
      for out, data in webdataset.shard_examples(path):
        if isinstance(out, manifest.Problem):
          continue
        for ex in out:
          if ex.kind == kind and (ex.file, ex.line) in keep:
            yield ex.key, record(ex, data)


def record(ex: manifest.Example, data: bytes) -> Dict:
  """The stored record of an example whose medium's bytes are `data`."""
  media = {m: b"" for m in manifest.MEDIA}
  if ex.medium:
    media[ex.medium] = data
  return {"key": ex.key, "file": f"{ex.file}:{ex.line}", **media, "captions": list(ex.captions),
          "question": ex.question, "answers": list(ex.answers), "text": ex.text,
          "metadata": ex.metadata}
