"""WORKDIR/metrics.jsonl without append mode (object stores cannot append;
gcsfs silently turns append into overwrite).

Scheme:
  WORKDIR/metrics/00000.jsonl, 00001.jsonl, ...   the records, CHUNK_RECORDS per
      chunk, in step order. Each write replaces only the open (last) chunk, a
      bounded object of at most CHUNK_RECORDS lines: one small PUT per log
      interval on GCS, whatever the length of the run.
  WORKDIR/metrics.jsonl   all chunks as one file, for people and tools that
      read one file. Refreshed at every write on a local disk (a local rewrite
      of a few MB costs milliseconds) and, on a remote workdir, whenever a
      chunk fills up and at close.
`read_metrics(workdir)` reads the chunks back as one stream (or metrics.jsonl
of an older workdir without chunks). A torn last line (a writer killed
mid-write on a file system without atomic replace) is dropped with a warning;
a bad line anywhere else is an error naming the file and line.
"""
from __future__ import annotations

import json
import logging
from typing import Dict, List, Mapping, Optional

from metalm_jax import run_files, storage

METRICS_FILE = run_files.METRICS_FILE
CHUNK_DIR = "metrics"
CHUNK_RECORDS = 200


def parse_jsonl(text: str, where: str) -> List[Dict]:
  """Records of a JSONL text; a torn last line is dropped with a warning."""
  lines = [l for l in text.split("\n") if l.strip()]
  out = []
  for i, line in enumerate(lines):
    try:
      out.append(json.loads(line))
    except json.JSONDecodeError as e:
      if i == len(lines) - 1:
        logging.warning("%s: dropping a torn last line (%d bytes): %s", where, len(line), e)
        break
      raise ValueError(f"{where}: line {i + 1} is not JSON ({e})") from e
  return out


def read_jsonl(path) -> List[Dict]:
  return parse_jsonl(storage.read_text(path), str(path))


def _chunks(workdir) -> List:
  d = storage.path(workdir) / CHUNK_DIR
  if not d.exists():
    return []
  return sorted((p for p in d.iterdir() if p.name.endswith(".jsonl") and p.name[:-6].isdigit()),
                key=lambda p: int(p.name[:-6]))


def read_metrics(workdir) -> List[Dict]:
  """Every record of a run, in order (chunks, else metrics.jsonl, else [])."""
  storage.refresh(workdir)
  chunks = _chunks(workdir)
  if chunks:
    return [r for c in chunks for r in read_jsonl(c)]
  single = storage.path(workdir) / METRICS_FILE
  return read_jsonl(single) if single.exists() else []


class MetricsLog:
  """Writes the scheme above; `rewind(step)` on every start."""

  def __init__(self, workdir, chunk_records: int = CHUNK_RECORDS):
    self.workdir = storage.path(workdir)
    self.chunk_records = chunk_records
    self.remote = storage.is_remote(self.workdir)
    self._sealed: List[Dict] = []   # records of full chunks (kept for the merged file)
    self._open: List[Dict] = []     # records of the open chunk
    self._index = 0                 # number of the open chunk

  def _chunk_path(self, i: int):
    return self.workdir / CHUNK_DIR / f"{i:05d}.jsonl"

  @staticmethod
  def _text(records) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)

  def rewind(self, step: Optional[int]) -> None:
    """Keeps the records with step <= `step` (None: none) and rewrites the
    files to match: a restart never duplicates or keeps steps after the
    checkpoint it resumed from."""
    records = read_metrics(self.workdir)
    keep = [] if step is None else [r for r in records if r["step"] <= step]
    for c in _chunks(self.workdir):
      storage.remove(c)
    n = self.chunk_records
    full = len(keep) // n
    for i in range(full):
      storage.write_text(self._chunk_path(i), self._text(keep[i * n:(i + 1) * n]))
    self._sealed, self._open, self._index = keep[:full * n], keep[full * n:], full
    if self._open:
      storage.write_text(self._chunk_path(self._index), self._text(self._open))
    self._write_merged()

  def write(self, record: Mapping) -> None:
    self._open.append(dict(record))
    with storage.errors(f"writing metrics to {self.workdir}"):
      storage.write_text(self._chunk_path(self._index), self._text(self._open))
    sealed = len(self._open) >= self.chunk_records
    if sealed:
      self._sealed += self._open
      self._open, self._index = [], self._index + 1
    if sealed or not self.remote:
      self._write_merged()

  def _write_merged(self) -> None:
    storage.write_text(self.workdir / METRICS_FILE, self._text(self._sealed + self._open))

  def close(self) -> None:
    self._write_merged()
