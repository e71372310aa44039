"""The profiler window: `config.profile = {start_step, num_steps}` traces the
train steps start_step+1 ... start_step+num_steps (num_steps 0 = off) with
jax.profiler into WORKDIR/profile/plugins/profile/<run>/ (*.xplane.pb,
*.trace.json.gz; open with TensorBoard's profile plugin or xprof). Process 0
only. On a remote workdir the trace is written to a local staging dir and
copied up when the window closes.
"""
from __future__ import annotations

import logging
import tempfile

import jax

from metalm_jax import storage

PROFILE_SUBDIR = "profile"


class Profiler:
  """Call `maybe_start(step)` before a train step and `maybe_stop(step, x)`
  after it (`step` = completed steps; `x` is waited for before the trace ends)."""

  def __init__(self, cfg, workdir: str, enabled: bool = True):
    cfg = cfg or {}
    self.start_step = int(cfg.get("start_step", 0))
    self.num_steps = int(cfg.get("num_steps", 0))
    if self.num_steps < 0 or self.start_step < 0:
      raise ValueError(f"config.profile={dict(cfg)!r}: start_step and num_steps must be >= 0")
    self.enabled = enabled and self.num_steps > 0
    self.out = storage.join(workdir, PROFILE_SUBDIR)
    self.active = False
    # Local by intent: jax.profiler writes with local file I/O; staged, then copied.
    self._dir = tempfile.mkdtemp(prefix="metalm_profile_") if storage.is_remote(self.out) \
        else self.out

  def maybe_start(self, step: int) -> None:
    if self.enabled and not self.active and step == self.start_step:
      logging.info("profiler: tracing steps %d-%d into %s", step + 1, step + self.num_steps,
                   self.out)
      jax.profiler.start_trace(self._dir)
      self.active = True

  def maybe_stop(self, step: int, wait_for=None, force: bool = False) -> None:
    if self.active and (force or step >= self.start_step + self.num_steps):
      if wait_for is not None:
        jax.block_until_ready(wait_for)
      jax.profiler.stop_trace()
      self.active = False
      if self._dir != self.out:
        root = storage.path(self._dir)
        for sub, _, files in root.walk():
          for f in files:
            rel = str(storage.path(sub / f)).replace(str(root), "", 1).lstrip("/")
            storage.copy(sub / f, storage.join(self.out, rel))
      logging.info("profiler: trace written to %s", self.out)
