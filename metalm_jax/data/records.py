"""Reading records of a random-access source (a tfds array_record data source)
so that a corrupt record is never an anonymous error.

`CheckedRecords(records, dataset, split)` reads like `records`; a record that
cannot be read or decoded raises `CorruptRecordError` naming the data set,
the split, the shard file and the record's index (in the split and in the
shard). With `skip=True` (`config.data.skip_corrupt_records`) it returns
`UNREADABLE` instead, which the per-example task counts as
`skipped_unreadable_record` and drops; each skip is logged.

`FieldRecords(raw, fields, source)` deserialises only the named fields of
each record of a tfds source opened with `deserialize_method=RAW_BYTES`
(`Source.fields`, data/sources.py): an embedded-world record carries some 30
fields (the sound clip, the video frames, the documents) and a task reads two
to four of them. Reading (`record[name]`) a field that was not named raises,
naming it.
"""
from __future__ import annotations

import bisect
import logging
import os
from typing import Any, List, Optional, Tuple

UNREADABLE = {"__unreadable_record__": True}


class CorruptRecordError(RuntimeError):
  """A record of a data set could not be read."""


def is_unreadable(record: Any) -> bool:
  return isinstance(record, dict) and record.get("__unreadable_record__", False) is True


def _shards(records) -> Optional[Tuple[List[str], List[int], List[int]]]:
  """(shard files, first split index of each, skip within each) from the tfds
  file instructions, or None for a source without them."""
  try:
    instructions = records.dataset_info.splits[records.split].file_instructions
  except (AttributeError, KeyError, TypeError):
    return None
  files, starts, skips, n = [], [], [], 0
  for fi in instructions:
    files.append(os.fspath(fi.filename))
    starts.append(n)
    skips.append(int(fi.skip))
    n += int(fi.take)
  return files, starts, skips


class CheckedRecords:
  """Random access (len, [i]) over `records`, naming corrupt records."""

  def __init__(self, records, dataset: str, split: str, skip: bool = False):
    self.records, self.dataset, self.split, self.skip = records, dataset, split, skip
    self._shards = _shards(records)

  def __len__(self) -> int:
    return len(self.records)

  def where(self, index: int) -> str:
    """'shard FILE, record K of the shard' (or '' when unknown)."""
    if self._shards is None:
      return ""
    files, starts, skips = self._shards
    k = bisect.bisect_right(starts, index) - 1
    if k < 0:
      return ""
    return f"shard {files[k]}, record {index - starts[k] + skips[k]} of the shard"

  def __getitem__(self, index):
    index = int(index)
    if not 0 <= index < len(self.records):
      raise IndexError(f"record {index} of {self.dataset!r} split {self.split!r} out of range "
                       f"[0, {len(self.records)})")
    try:
      return self.records[index]
    except Exception as e:  # noqa: BLE001  any read/decode failure of this record
      where = self.where(index)
      msg = (f"data set {self.dataset!r} split {self.split!r}: record {index} is unreadable"
             f"{' (' + where + ')' if where else ''}: {type(e).__name__}: {e}")
      if self.skip:
        logging.warning("%s; skipped (config.data.skip_corrupt_records)", msg)
        return UNREADABLE
      raise CorruptRecordError(
          msg + "; set config.data.skip_corrupt_records=True to skip and count such "
          "records") from None


class Fields(dict):
  """A record's selected fields; reading any other with [] raises naming it.
  `.get` keeps dict's meaning (generic code asks for optional keys, e.g.
  is_unreadable); a source whose extract .get()s a field it did not name
  gets the default, which tests/test_data_fields.py's comparison with full
  records catches for every world source."""

  def __init__(self, values, source: str, fields: Tuple[str, ...]):
    super().__init__(values)
    self.source, self.fields = source, fields

  def __missing__(self, key):
    raise KeyError(f"data source {self.source!r} read record field {key!r}, which is not in "
                   f"its Source.fields {self.fields} (data/sources.py): add it there")


class FieldRecords:
  """Random access (len, [i]) over a RAW_BYTES tfds source, each record
  deserialised to `fields` only (values as a full deserialisation gives)."""

  def __init__(self, raw, fields: Tuple[str, ...], source: str):
    import tensorflow_datasets as tfds
    features = raw.dataset_info.features
    unknown = [f for f in fields if f not in features]
    if unknown:
      raise ValueError(f"data source {source!r}: Source.fields names {unknown}, not fields of "
                       f"{raw.dataset_info.full_name}; it has {sorted(features)}")
    self.raw, self.fields, self.source = raw, tuple(fields), source
    self._features = tfds.features.FeaturesDict({f: features[f] for f in fields})
    # What CheckedRecords reads to name a corrupt record's shard.
    self.dataset_info, self.split = raw.dataset_info, raw.split

  def __len__(self) -> int:
    return len(self.raw)

  def __getitem__(self, index):
    return Fields(self._features.deserialize_example_np(self.raw[index]), self.source,
                  self.fields)
