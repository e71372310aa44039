"""Orbax checkpoints with two items: `state` (the train state) and `data_iter`
(the Grain iterator position), saved asynchronously every N steps, keeping the
last K. Restores onto whatever shardings the caller's abstract target carries,
so a checkpoint written on one mesh loads onto another.

A step that cannot be restored (truncated or missing files) is reported in
one line naming the step and the file; with `restore_fallback` (default on)
the restore falls back to the previous step, saying so, and the unreadable
step is replaced when the run saves that step again.
"""
from __future__ import annotations

import json
import logging
import os
import re
from typing import Any, Optional, Tuple

import grain
import jax
import orbax.checkpoint as ocp

from metalm_jax.train import nonfinite

CKPT_SUBDIR = "checkpoints"
# Files every saved step holds (Orbax 0.12 layout); checked before a restore so
# that a missing one is named instead of surfacing as a tree-structure error.
REQUIRED_FILES = ("state/_METADATA", "data_iter")


class CheckpointRestoreError(RuntimeError):
  """A checkpoint step could not be restored."""


def _restore_error(step_dir: str, step: int, e: Exception) -> CheckpointRestoreError:
  """One line: the step, the file the error names (if any) and the reason."""
  text = str(e)
  paths = [f.rstrip(":,.") for f in re.findall(r"[^\s\"'\[\]\\]+", text)]
  paths = [f for f in paths if f.startswith(step_dir + os.sep)]
  files = [f for f in paths if not f.endswith(os.sep)] or paths  # a file over its folder
  where = files[-1] if files else step_dir
  reason = " ".join(text.split())[:300] or type(e).__name__
  return CheckpointRestoreError(f"checkpoint step {step} cannot be restored from {where}: "
                                f"{type(e).__name__}: {reason}")


class _IterSnapshot:
  """The iterator position captured when the save is requested, so an async
  save does not see later batches (Grain's handler calls get_state on save)."""

  def __init__(self, iterator):
    state = iterator.get_state()
    self._bytes = state if isinstance(state, bytes) else json.dumps(state).encode()

  def get_state(self) -> bytes:
    return self._bytes


class _IterRestoreTarget:
  """Feeds a saved position (bytes) back into a live iterator."""

  def __init__(self, iterator):
    self.iterator = iterator

  def set_state(self, state: bytes) -> None:
    if isinstance(self.iterator.get_state(), bytes):
      self.iterator.set_state(state)
    else:
      self.iterator.set_state(json.loads(state.decode()))

  def start_prefetch(self) -> None:
    start = getattr(self.iterator, "start_prefetch", None)
    if start is not None:
      start()


def with_shardings(abstract_tree, shardings):
  """ShapeDtypeStructs carrying the target shardings (restore target)."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      abstract_tree, shardings)


class Checkpointer:
  """cfg: config.checkpoint (every_steps, keep, async_save, restore_fallback)."""

  def __init__(self, workdir: str, cfg):
    self.directory = os.path.abspath(os.path.join(workdir, CKPT_SUBDIR))
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=1, max_to_keep=cfg.keep,
        enable_async_checkpointing=cfg.async_save, create=True)
    self.every = cfg.every_steps
    self.fallback = bool(cfg.get("restore_fallback", True))
    self.unreadable = set()  # steps found corrupt: replaced when saved again
    self.manager = ocp.CheckpointManager(self.directory, item_names=("state", "data_iter"),
                                         options=options)

  def latest_step(self) -> Optional[int]:
    return self.manager.latest_step()

  def should_save(self, step: int) -> bool:
    return self.every > 0 and step % self.every == 0

  def save(self, step: int, state, data_iter, force: bool = False) -> bool:
    if step in self.manager.all_steps():
      if step not in self.unreadable:
        return False
      self.manager.delete(step)
      self.unreadable.discard(step)
    nonfinite.check_finite(state, step)  # never write a NaN/Inf checkpoint
    args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                              data_iter=grain.checkpoint.CheckpointSave(_IterSnapshot(data_iter)))
    return self.manager.save(step, args=args, force=force)

  def restore(self, abstract_state, data_iter, step: Optional[int] = None) -> Tuple[Any, int]:
    """(state, step) from the latest (or given) step; moves `data_iter` there.
    A latest step that cannot be restored falls back to the one before (if
    `restore_fallback`); a given step does not fall back."""
    if step is not None:
      return self._restore(step, abstract_state, data_iter), step
    steps = sorted(self.manager.all_steps(), reverse=True)
    if not steps:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    for i, s in enumerate(steps):
      try:
        return self._restore(s, abstract_state, data_iter), s
      except CheckpointRestoreError as e:
        if not self.fallback or i + 1 == len(steps):
          raise
        self.unreadable.add(s)
        logging.warning("%s; falling back to step %d (checkpoint.restore_fallback)", e,
                        steps[i + 1])
    raise AssertionError("unreachable")

  def _restore(self, step: int, abstract_state, data_iter):
    step_dir = os.path.join(self.directory, str(step))
    for name in REQUIRED_FILES:
      if not os.path.exists(os.path.join(step_dir, name)):
        raise CheckpointRestoreError(f"checkpoint step {step} cannot be restored: "
                                     f"{os.path.join(step_dir, name)} is missing")
    try:
      out = self.manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state),
          data_iter=grain.checkpoint.CheckpointRestore(_IterRestoreTarget(data_iter))))
    except Exception as e:  # noqa: BLE001  any failure becomes one line naming the file
      raise _restore_error(step_dir, step, e) from None
    return out["state"]

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def restore_params(path: str, abstract_params):
  """Params only, from a workdir (latest checkpoint), a checkpoints dir or one
  step dir; onto the shardings `abstract_params` carries (ShapeDtypeStructs).
  A checkpoint of the other layer layout (unrolled vs scanned stacks) is read
  in its own layout and converted (metalm_jax/models/layout.py)."""
  from metalm_jax.models import layout
  path = os.path.abspath(path)
  if os.path.isdir(os.path.join(path, CKPT_SUBDIR)):
    path = os.path.join(path, CKPT_SUBDIR)
  if os.path.isdir(os.path.join(path, "state")):
    step_dir = path
  else:
    manager = ocp.CheckpointManager(path, item_names=("state", "data_iter"),
                                    options=ocp.CheckpointManagerOptions(read_only=True))
    step = manager.latest_step()
    manager.close()
    if step is None:
      raise FileNotFoundError(f"init_from={path!r}: no checkpoint found")
    step_dir = os.path.join(path, str(step))
  state_dir = os.path.join(step_dir, "state")
  checkpointer = ocp.PyTreeCheckpointer()
  meta = checkpointer.metadata(state_dir)
  saved = _plain(getattr(meta, "item_metadata", meta)["params"])
  target = {"params": layout.match(abstract_params, saved)}
  restored = checkpointer.restore(
      state_dir,
      args=ocp.args.PyTreeRestore(
          item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
          partial_restore=True))["params"]
  if jax.tree.structure(restored) == jax.tree.structure(abstract_params):
    return restored
  shardings = jax.tree.map(lambda x: x.sharding, abstract_params)
  return jax.jit(lambda t: layout.match(t, abstract_params), out_shardings=shardings)(restored)


def _plain(node):
  """Orbax tree metadata -> nested dicts (leaves kept)."""
  if hasattr(node, "keys"):
    return {k: _plain(node[k]) for k in node.keys()}
  return node
