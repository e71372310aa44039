"""Orbax checkpoints with two items: `state` (the train state) and `data_iter`
(the Grain iterator position), saved asynchronously every N steps, keeping the
last K. Restores onto whatever shardings the caller's abstract target carries,
so a checkpoint written on one mesh loads onto another.

The directory may be local or gs:// (Orbax gets the path as is). Arrays go
through tensorstore, whose default GCS retry policy (32 tries, up to 32 s
apart) keeps a run hanging for many minutes when the bucket is unreachable:
`set_gcs_retries` bounds it (config.checkpoint.gcs_request_retries), and a
failed save is raised as `storage.StorageError` naming the directory.
"""
from __future__ import annotations

import json
from typing import Any, Mapping, Optional, Tuple

import grain
import jax
import orbax.checkpoint as ocp
from orbax.checkpoint._src.serialization import tensorstore_utils as _ts_utils

from metalm_jax import storage

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


def set_gcs_retries(retries: Optional[Mapping[str, float]]) -> None:
  """Bounds tensorstore's GCS retries for every Orbax read and write:
  {max_retries, initial_delay_s, max_delay_s} (None/empty: tensorstore's
  default). Orbax 0.12.8 builds each tensorstore context from these two
  module dicts and takes no context option, so the policy goes there."""
  spec = None
  if retries:
    for k in ("max_retries", "initial_delay_s", "max_delay_s"):
      if k not in retries:
        raise ValueError(f"config.checkpoint.gcs_request_retries.{k} is missing")
    spec = {"max_retries": int(retries["max_retries"]),
            "initial_delay": f"{float(retries['initial_delay_s'])}s",
            "max_delay": f"{float(retries['max_delay_s'])}s"}
  for ctx in (_ts_utils._BASE_TS_CONTEXT, _ts_utils._DEFAULT_OCDBT_TS_CONTEXT):
    if spec is None:
      ctx.pop("gcs_request_retries", None)
    else:
      ctx["gcs_request_retries"] = spec


class Checkpointer:
  """cfg: config.checkpoint (every_steps, keep, async_save, gcs_request_retries)."""

  def __init__(self, workdir: str, cfg):
    set_gcs_retries(cfg.get("gcs_request_retries"))
    self.directory = storage.join(workdir, CKPT_SUBDIR)
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
    with self._storage(f"saving step {step}"):
      return self.manager.save(step, args=args, force=force)

  def _storage(self, what: str):
    return storage.errors(f"checkpoint {what} to {self.directory}")

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
    with self._storage("save"):
      self.manager.wait_until_finished()

  def close(self) -> None:
    with self._storage("save"):
      self.manager.wait_until_finished()
    self.manager.close()


def restore_params(path: str, abstract_params):
  """Params only, from a workdir (latest checkpoint), a checkpoints dir or one
  step dir; onto the shardings `abstract_params` carries (ShapeDtypeStructs)."""
  path = storage.join(path)
  if storage.path(path).joinpath(CKPT_SUBDIR).is_dir():
    path = storage.join(path, CKPT_SUBDIR)
  if storage.path(path).joinpath("state").is_dir():
    step_dir = path
  else:
    manager = ocp.CheckpointManager(path, item_names=("state", "data_iter"),
                                    options=ocp.CheckpointManagerOptions(read_only=True))
    step = manager.latest_step()
    manager.close()
    if step is None:
      raise FileNotFoundError(f"init_from={path!r}: no checkpoint found")
    step_dir = storage.join(path, str(step))
  target = {"params": abstract_params}
  restored = ocp.PyTreeCheckpointer().restore(
      storage.path(step_dir) / "state",
      args=ocp.args.PyTreeRestore(
          item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
          partial_restore=True))
  return restored["params"]
