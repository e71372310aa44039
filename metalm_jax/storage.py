"""Every file path of the project, local or remote (gs://), through etils.epath.

Object stores have no append, no atomic rename and no locks, so writers here
replace whole files and never append: an object PUT is atomic by itself; on a
local disk the bytes go to a temporary file that is then renamed over the
target, so a reader never sees half a file.

gs:// goes through gcsfs (`pip install metalm_jax[gcs]`). Against a local GCS
emulator set, before anything imports gcsfs or tensorstore:
STORAGE_EMULATOR_HOST and TENSORSTORE_GCS_HTTP_URL (http://127.0.0.1:PORT),
GCE_METADATA_ROOT=127.0.0.1:9, FSSPEC_GS_TOKEN=anon, NO_GCE_CHECK=true,
GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false (tests/gcs_emulator.py does).
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from typing import Any, Union

from etils import epath

PathLike = Union[str, os.PathLike]


class StorageError(OSError):
  """A read or write of the workdir failed (bucket unreachable, ...)."""


@contextlib.contextmanager
def errors(what: str):
  """Re-raises any failure inside as StorageError('storage error while WHAT: ...')."""
  try:
    yield
  except StorageError:
    raise
  except Exception as e:  # noqa: BLE001  any client's error: aiohttp, tensorstore, OSError
    raise StorageError(f"storage error while {what}: {type(e).__name__}: {e}") from e


class _PendingWritesFilter(logging.Filter):
  """On the `asyncio` logger once a storage error ends a run: drops "Future
  exception was never retrieved" records. Each write still pending in the
  failed checkpoint save reports the same outage once more when its future is
  collected at exit (one record per array: hundreds of lines, ~0.5 MB in the
  GCS outage test, which buried the error). One line says so instead."""

  def __init__(self, error: str):
    super().__init__()
    self.error, self.dropped = error, 0

  def filter(self, record: logging.LogRecord) -> bool:
    if not record.getMessage().startswith("Future exception was never retrieved"):
      return True
    if not self.dropped:
      sys.stderr.write("pending writes of the failed save also failed; not repeated here. "
                       f"The run ended on: {self.error}\n")
      sys.stderr.flush()
    self.dropped += 1
    return False


def quiet_pending_writes(error: str) -> logging.Filter:
  """After a StorageError that ends the process: keep asyncio's reports of the
  same failure in pending writes from burying it (_PendingWritesFilter).
  Returns the filter (its `dropped` counts them)."""
  f = _PendingWritesFilter(error)
  logging.getLogger("asyncio").addFilter(f)
  return f


def is_remote(p: PathLike) -> bool:
  """True for URLs (gs://, s3://, ...), False for local paths."""
  return "://" in os.fspath(p)


def path(p: PathLike) -> epath.Path:
  """An epath.Path: URLs as they are; local paths with ~ expanded, made
  absolute (Orbax wants absolute paths)."""
  if is_remote(p):
    return epath.Path(os.fspath(p))
  return epath.Path(os.fspath(p)).expanduser().resolve()


def refresh(p: PathLike) -> None:
  """Forgets cached listings and sizes under a remote `p` (gcsfs caches them
  per process), so a reader sees what another process wrote since."""
  if is_remote(p):
    from etils.epath import backend
    # gcsfs forgets only a path and its parents; the listings below it must go too.
    backend.fsspec_backend.fs(os.fspath(p)).invalidate_cache()


def join(base: PathLike, *parts: str) -> str:
  """`base/parts...` as a string (local made absolute; URLs kept)."""
  return os.fspath(path(base).joinpath(*parts))


def exists(p: PathLike) -> bool:
  return path(p).exists()


def makedirs(p: PathLike) -> epath.Path:
  out = path(p)
  out.mkdir(parents=True, exist_ok=True)
  return out


def write_bytes(p: PathLike, data: bytes) -> str:
  """Replaces the file with `data` (never appends); creates parent dirs."""
  out = path(p)
  out.parent.mkdir(parents=True, exist_ok=True)
  if is_remote(out):
    out.write_bytes(data)
  else:
    tmp = out.parent / f".{out.name}.tmp{os.getpid()}"
    tmp.write_bytes(data)
    tmp.replace(out)
  return os.fspath(out)


def write_text(p: PathLike, text: str) -> str:
  return write_bytes(p, text.encode("utf-8"))


def write_json(p: PathLike, obj: Any) -> str:
  return write_text(p, json.dumps(obj, indent=2, sort_keys=True))


def read_bytes(p: PathLike) -> bytes:
  return path(p).read_bytes()


def read_text(p: PathLike) -> str:
  return path(p).read_text()


def read_json(p: PathLike) -> Any:
  return json.loads(read_text(p))


def copy(src: PathLike, dst: PathLike) -> str:
  """Copies one file (local <-> remote in any direction), replacing `dst`."""
  return write_bytes(dst, read_bytes(src))


def remove(p: PathLike) -> None:
  path(p).unlink(missing_ok=True)
