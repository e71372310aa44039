"""Orbax checkpoints with two items: `state` (the train state) and `data_iter`
(the Grain iterator position), saved asynchronously every N steps, keeping the
last K. Restores onto whatever shardings the caller's abstract target carries,
so a checkpoint written on one mesh loads onto another.
"""
from __future__ import annotations

import json
import os
from typing import Any, Optional, Tuple

import grain
import jax
import orbax.checkpoint as ocp

CKPT_SUBDIR = "checkpoints"


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
  """cfg: config.checkpoint (every_steps, keep, async_save)."""

  def __init__(self, workdir: str, cfg):
    self.directory = os.path.abspath(os.path.join(workdir, CKPT_SUBDIR))
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=1, max_to_keep=cfg.keep,
        enable_async_checkpointing=cfg.async_save, create=True)
    self.every = cfg.every_steps
    self.manager = ocp.CheckpointManager(self.directory, item_names=("state", "data_iter"),
                                         options=options)

  def latest_step(self) -> Optional[int]:
    return self.manager.latest_step()

  def should_save(self, step: int) -> bool:
    return self.every > 0 and step % self.every == 0

  def save(self, step: int, state, data_iter, force: bool = False) -> bool:
    if step in self.manager.all_steps():
      return False
    args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                              data_iter=grain.checkpoint.CheckpointSave(_IterSnapshot(data_iter)))
    return self.manager.save(step, args=args, force=force)

  def restore(self, abstract_state, data_iter, step: Optional[int] = None) -> Tuple[Any, int]:
    """(state, step) from the latest (or given) step; moves `data_iter` there."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    out = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state),
        data_iter=grain.checkpoint.CheckpointRestore(_IterRestoreTarget(data_iter))))
    return out["state"], step

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
