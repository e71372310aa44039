"""Host memory for XLA:CPU: keep what one step frees for the next.

XLA:CPU allocates a compiled program's temporaries as one host buffer per
execution (the `bench` train step: 365 MB) and frees it when the step ends.
glibc's malloc serves a block that large with a fresh `mmap` and unmaps it on
`free` (its mmap threshold is capped at 32 MiB), so every step faults its
temporaries in again, page by page: ~100k minor page faults and ~0.2 s of
kernel time per `bench` step on 2 cores (docs/performance.md, "Host memory").

`configure("keep")` sets glibc's malloc (`mallopt`) to serve large blocks
from its heap and to keep freed memory there: one arena (M_ARENA_MAX=1: a
thread's own arena cannot hold a block over 64 MiB and falls back to mmap),
no mmap (M_MMAP_MAX=0) and no trimming of the heap below 2 GiB free
(M_TRIM_THRESHOLD). It must run before the XLA backend starts: a thread keeps
the arena it first allocated from. The same settings from the environment,
for a process that cannot call it first: `ENV` below.

Modes (`--host_malloc` of metalm_jax.main and the benchmarks): `keep`;
`system` (leave malloc alone); `auto` (the default): `keep` when this process
runs JAX on CPU only (JAX_PLATFORMS names only cpu, or neither libtpu nor a
JAX plugin is installed), else `system`. The price of `keep`: memory the
process frees stays with it (its resident size stays near its peak), and all
threads allocate from one arena, which is why accelerator hosts, where the
step's buffers are device memory and input threads allocate in parallel, opt
in rather than get it by default.
"""
from __future__ import annotations

import ctypes
import importlib.metadata
import importlib.util
import logging
import os
from typing import Optional

MODES = ("auto", "keep", "system")
# mallopt parameters (glibc malloc.h) and the values `keep` sets.
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8
KEEP = ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, 2**31 - 1))
ENV = "MALLOC_ARENA_MAX=1 MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=2147483647"

_log = logging.getLogger(__name__)
_applied = {"mode": None}


def cpu_only(platforms: Optional[str] = None) -> bool:
  """Whether JAX in this process will run on CPU only, decided without
  starting a backend: from `platforms` (default: jax_platforms, which
  JAX_PLATFORMS sets) when given, else from what is installed."""
  if platforms is None:
    import jax
    platforms = jax.config.jax_platforms
  if platforms:
    return all(p.strip() == "cpu" for p in platforms.split(","))
  plugins = list(importlib.metadata.entry_points(group="jax_plugins"))
  return not (plugins or importlib.util.find_spec("libtpu")
              or importlib.util.find_spec("jax_plugins"))


def _backend_started() -> bool:
  try:
    from jax._src import xla_bridge
    return bool(xla_bridge.backends_are_initialized())
  except (ImportError, AttributeError):  # private API moved: count threads instead
    return len(os.listdir("/proc/self/task")) > 1 if os.path.isdir("/proc/self/task") else True


def _glibc():
  """glibc's C library (with mallopt), or None on another libc."""
  try:
    version = os.confstr("CS_GNU_LIBC_VERSION")
  except (AttributeError, ValueError, OSError):
    version = None
  if not version:
    return None
  libc = ctypes.CDLL(None)
  return libc if hasattr(libc, "mallopt") else None


def configure(mode: str = "auto") -> str:
  """Applies `mode` (MODES) to this process's malloc; returns the mode that
  holds afterwards, 'keep' or 'system' (logged, with the reason when a
  requested 'keep' could not be applied)."""
  if mode not in MODES:
    raise ValueError(f"host_malloc={mode!r} is not one of {MODES}")
  if _applied["mode"] == "keep":
    return "keep"
  if mode == "auto":
    mode = "keep" if cpu_only() else "system"
  if mode == "system":
    return "system"
  libc = _glibc()
  if libc is None:
    _log.warning("host_malloc=keep: not glibc malloc here; left as it is")
    return "system"
  if _backend_started():
    _log.warning("host_malloc=keep: the JAX backend has already started its threads, which "
                 "keep their own malloc arenas; left as it is (set %s in the environment "
                 "before starting Python instead)", ENV)
    return "system"
  for param, value in KEEP:
    if libc.mallopt(param, value) != 1:
      _log.warning("host_malloc=keep: mallopt(%d, %d) refused; left as it is", param, value)
      return "system"
  _applied["mode"] = "keep"
  _log.info("host_malloc=keep: large host buffers stay in malloc's heap between steps")
  return "keep"
