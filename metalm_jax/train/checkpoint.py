"""Orbax checkpoints with two items: `state` (the train state) and `data_iter`
(the Grain iterator position), saved asynchronously every N steps, keeping the
last K. Restores onto whatever shardings the caller's abstract target carries,
so a checkpoint written on one mesh loads onto another.

A step that cannot be restored (truncated or missing files, or data that no
longer matches the digests saved with it: train/digests.py) is reported in
one line naming the step and the file or array; with `restore_fallback`
(default on) the restore falls back to the previous step, saying so, and the
unreadable step is replaced when the run saves that step again.

Eviction: the latest `keep` steps are kept, and any step in `protected`
(the trainer protects the last good step while a divergence is under way:
train/divergence.py) whatever its age.

The directory may be local or gs:// (Orbax gets the path as is). Arrays go
through tensorstore, whose default GCS retry policy (32 tries, up to 32 s
apart) keeps a run hanging for many minutes when the bucket is unreachable:
`set_gcs_retries` bounds it (config.checkpoint.gcs_request_retries), and a
failed save is raised as `storage.StorageError` naming the directory.

Device-to-host transfer at save time: Orbax's replica-parallel mode splits
each replicated array into one slice per replica, an eager slice op per
shard; on a CPU host with 8 devices that costs ~10 s for the first save of
the tiny model (0.9 s without). `config.checkpoint.replica_parallel`:
"auto" (on for TPU, off on CPU and GPU, Orbax's own GPU default), True or False.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import threading
from typing import Any, Dict, Mapping, Optional, Tuple

import grain
import jax
import orbax.checkpoint as ocp
from orbax.checkpoint._src.metadata import array_metadata_store as _array_metadata_store
from orbax.checkpoint._src.serialization import tensorstore_utils as _ts_utils

from metalm_jax import run_files, storage

from metalm_jax.train import digests as digests_lib
from metalm_jax.train import nonfinite
from metalm_jax.models import layout
from metalm_jax.models import lora as lora_lib

CKPT_SUBDIR = run_files.CHECKPOINTS_DIR
# Files every saved step holds (Orbax 0.12 layout); checked before a restore so
# that a missing one is named instead of surfacing as a tree-structure error.
REQUIRED_FILES = ("state/_METADATA", "data_iter")
ITEMS = ("state", "data_iter", "counters", "digests")
TMP_MARK = ".orbax-checkpoint-tmp"  # Orbax's suffix of a step directory being written


class CheckpointRestoreError(RuntimeError):
  """A checkpoint step could not be restored."""


def _chain(e: BaseException):
  """The exception and its causes, outermost first."""
  out = []
  while e is not None and e not in out:
    out.append(e)
    e = e.__cause__ or (None if e.__suppress_context__ else e.__context__)
  return out


def _short_file(step_dir: str, text: str) -> Optional[str]:
  """A local file under `step_dir` whose size is the one a read error reports
  ("... is not valid for value of size N": tensorstore names the key and the
  database, not the data file that is too short)."""
  m = re.search(r"value of size (\d+)", text)
  if not m or storage.is_remote(step_dir):
    return None
  size = int(m.group(1))
  hits = [os.path.join(d, f) for d, _, fs in os.walk(step_dir) for f in fs
          if os.path.getsize(os.path.join(d, f)) == size]
  return hits[0] if len(hits) == 1 else None


def _restore_error(step_dir: str, step: int, e: Exception) -> CheckpointRestoreError:
  """One line: the step, the file the error names (if any) and the reason
  (the innermost cause: Orbax wraps tensorstore's error in a spec dump)."""
  chain = _chain(e)
  text = " ".join(str(x) for x in chain)
  paths = [f.rstrip(":,.") for f in re.findall(r"[^\s\"'\[\]\\]+", text)]
  paths = [f for f in paths if f.startswith(step_dir + "/")]
  files = [f for f in paths if not f.endswith("/")]
  where = (files[-1] if files else _short_file(step_dir, text)) or (
      paths[-1] if paths else step_dir)  # a file over its folder
  inner = chain[-1]
  reason = " ".join(str(inner).split())
  if reason.startswith(where + ": "):  # the error names its file first: once is enough
    reason = reason[len(where) + 2:]
  reason = reason[:300] or type(inner).__name__
  return CheckpointRestoreError(f"checkpoint step {step} cannot be restored from {where}: "
                                f"{type(inner).__name__}: {reason}")


class _IterSnapshot:
  """The iterator position captured when the save is requested, so an async
  save does not see later batches (Grain's handler calls get_state on save);
  written with its digest (train/digests.py)."""

  def __init__(self, iterator):
    state = iterator.get_state()
    if isinstance(state, bytes):
      state = json.loads(state.decode())
    self._bytes = digests_lib.wrap_iterator_state(state)

  def get_state(self) -> bytes:
    return self._bytes


class _IterRestoreTarget:
  """Feeds a saved position (bytes) back into a live iterator after checking
  its digest; `checked` tells whether the file had one."""

  def __init__(self, iterator, where: str):
    self.iterator, self.where, self.checked = iterator, where, None

  def set_state(self, state: bytes) -> None:
    try:
      state, self.checked = digests_lib.unwrap_iterator_state(state)
    except digests_lib.DigestMismatch as e:
      raise digests_lib.DigestMismatch(f"{self.where}: {e}") from None
    if isinstance(self.iterator.get_state(), bytes):
      self.iterator.set_state(json.dumps(state).encode())
    else:
      self.iterator.set_state(state)

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


def replica_parallel_on(mode, backend: Optional[str] = None) -> bool:
  """config.checkpoint.replica_parallel ("auto", True or False; from the
  command line the strings "true" / "false") -> bool."""
  if isinstance(mode, bool):
    return mode
  choice = {"auto": None, "true": True, "false": False}.get(str(mode).lower(), "bad")
  if choice == "bad":
    raise ValueError(f"config.checkpoint.replica_parallel={mode!r}: use 'auto', true or false")
  return (backend or jax.default_backend()) == "tpu" if choice is None else choice


class _Protected:
  """Orbax preservation policy: keeps the steps in a (mutable) set."""

  def __init__(self, steps):
    self.steps = steps

  def should_preserve(self, checkpoints, *, context):
    del context
    return [c.step in self.steps for c in checkpoints]


def set_replica_parallel(mode) -> bool:
  """Registers Orbax's jax.Array handler with replica-parallel saving on or
  off (Orbax keeps one process-wide handler registry; the handler is
  otherwise the default one). Returns the setting."""
  on = replica_parallel_on(mode)
  ocp.type_handlers.register_type_handler(
      jax.Array, ocp.type_handlers.ArrayHandler(
          use_replica_parallel=on, array_metadata_store=_array_metadata_store.Store()),
      override=True)
  return on


@contextlib.contextmanager
def _sigint_deferred(step: int):
  """Ctrl-C while a save is being started is held until the save is handed to
  Orbax's background thread (then raised, and the trainer waits for the save);
  a second Ctrl-C aborts at once."""
  if threading.current_thread() is not threading.main_thread():
    yield
    return
  pending = []

  def handle(signum, frame):
    if pending:
      raise KeyboardInterrupt
    pending.append(signum)
    logging.warning("Ctrl-C: starting the save of step %d first (Ctrl-C again to abort now)",
                    step)

  old = signal.signal(signal.SIGINT, handle)
  try:
    yield
  finally:
    signal.signal(signal.SIGINT, old)
  if pending:
    raise KeyboardInterrupt


# Where the guard moves checkpoints saved after the last good step of a
# divergence (train/divergence.py), beside CKPT_SUBDIR in the workdir.
DIVERGED_SUBDIR = run_files.DIVERGED_DIR


class Checkpointer:
  """cfg: config.checkpoint (every_steps, keep, async_save, restore_fallback,
  gcs_request_retries, replica_parallel)."""

  def __init__(self, workdir: str, cfg):
    set_gcs_retries(cfg.get("gcs_request_retries"))
    set_replica_parallel(cfg.get("replica_parallel", "auto"))
    self.directory = storage.join(workdir, CKPT_SUBDIR)
    # Step and item directories are created before save() returns (not in
    # Orbax's background threads): when storage fails there, the error is
    # raised at once. Created asynchronously, a failed step directory left the
    # item handlers waiting 300 s (Orbax's coordination timeout) for a signal
    # that never came (seen with the GCS emulator stopped mid-save).
    # Leftover temporary step directories (a save cut short) are removed at start.
    self.protected = set()  # steps kept whatever their age (see the module docstring)
    policies = ocp.checkpoint_managers
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=1, enable_async_checkpointing=cfg.async_save, create=True,
        cleanup_tmp_directories=True,
        preservation_policy=policies.AnyPreservationPolicy(
            [policies.LatestN(n=cfg.keep), _Protected(self.protected)]),
        async_options=ocp.AsyncOptions(create_directories_asynchronously=False))
    self.every = cfg.every_steps
    self.fallback = bool(cfg.get("restore_fallback", True))
    self.unreadable = set()  # steps found corrupt: replaced when saved again
    self.restored_counters: Dict[str, int] = {}  # `counters` of the last restored step
    self.manager = ocp.CheckpointManager(self.directory, item_names=ITEMS, options=options)
    self._closed = False

  def latest_step(self) -> Optional[int]:
    return self.manager.latest_step()

  def all_steps(self):
    return sorted(self.manager.all_steps())

  def delete(self, step: int) -> None:
    with self._storage(f"deleting step {step}"):
      self.manager.delete(step)

  def set_aside(self, step: int) -> str:
    """Moves step `step` out of the checkpoints dir to
    <workdir>/DIVERGED_SUBDIR/<step> (replacing an older copy there), so a
    restart never resumes from it but nothing is lost; returns where it went."""
    dest_root = storage.join(storage.path(self.directory).parent, DIVERGED_SUBDIR)
    dest = storage.join(dest_root, str(step))
    with self._storage(f"moving step {step} to {dest_root}"):
      self.manager.wait_until_finished()
      storage.path(dest_root).mkdir(parents=True, exist_ok=True)
      if storage.exists(dest):
        storage.path(dest).rmtree()
      storage.path(storage.join(self.directory, str(step))).rename(dest)
      self.manager.reload()
    return dest_root

  def should_save(self, step: int) -> bool:
    return self.every > 0 and step % self.every == 0

  def save(self, step: int, state, data_iter, force: bool = False,
           counters: Optional[Mapping[str, int]] = None) -> bool:
    """Saves state, the data iterator and `counters` (the run's data/* skip
    counts, JSON), so a resumed run keeps counting."""
    if step in self.manager.all_steps():
      if step not in self.unreadable:
        return False
      self.manager.delete(step)
      self.unreadable.discard(step)
    nonfinite.check_finite(state, step)  # never write a NaN/Inf checkpoint
    counts = {k: int(v) for k, v in (counters or {}).items()}
    args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                              data_iter=grain.checkpoint.CheckpointSave(_IterSnapshot(data_iter)),
                              counters=ocp.args.JsonSave(counts),
                              digests=ocp.args.JsonSave(digests_lib.for_save(state, counts)))
    with _sigint_deferred(step), self._storage(f"saving step {step}"):
      return self.manager.save(step, args=args, force=force)

  def _storage(self, what: str):
    return storage.errors(f"checkpoint {what} to {self.directory}")

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
    step_dir = storage.join(self.directory, str(step))
    for name in REQUIRED_FILES:
      if not storage.exists(storage.join(step_dir, name)):
        raise CheckpointRestoreError(f"checkpoint step {step} cannot be restored: "
                                     f"{storage.join(step_dir, name)} is missing")
    iter_file = storage.join(step_dir, "data_iter",
                             f"process_{jax.process_index()}-of-{jax.process_count()}.json")
    target = _IterRestoreTarget(data_iter, iter_file)
    items = dict(state=ocp.args.StandardRestore(abstract_state),
                 data_iter=grain.checkpoint.CheckpointRestore(target))
    # Absent in checkpoints written before the counters (digests) were saved.
    has = {k: storage.exists(storage.join(step_dir, k)) for k in ("counters", "digests")}
    items.update({k: ocp.args.JsonRestore() for k, there in has.items() if there})
    try:
      out = self.manager.restore(step, args=ocp.args.Composite(**items))
      counters = {k: int(v) for k, v in (out["counters"] or {}).items()} if has["counters"] else {}
      saved = out["digests"] if has["digests"] else None
      if saved is not None:
        try:
          digests_lib.check_arrays(saved["arrays"], out["state"])
        except digests_lib.DigestMismatch as e:
          raise digests_lib.DigestMismatch(f"{storage.join(step_dir, 'state')}: {e}") from None
        digests_lib.check_counters(saved, counters)
    except Exception as e:  # noqa: BLE001  any failure becomes one line naming the file
      raise _restore_error(step_dir, step, e) from None
    unchecked = [what for what, ok in (("arrays", saved is not None),
                                       ("data-iterator state", target.checked)) if not ok]
    if unchecked:
      logging.warning("checkpoint step %d has no digests of its %s (saved before checkpoints "
                      "carried them): restored without checking them", step,
                      " and ".join(unchecked))
    self.restored_counters = counters
    return out["state"]

  def wait(self) -> None:
    with self._storage("save"):
      self.manager.wait_until_finished()

  def close(self) -> None:
    """Waits for the save in flight and closes (once; later calls do nothing)."""
    if self._closed:
      return
    with self._storage("save"):
      self.manager.wait_until_finished()
    self.manager.close()
    self._closed = True

  def abandon(self) -> None:
    """On the way out after an error: waits for the save in flight (a second
    Ctrl-C aborts the wait), closes, and removes temporary step directories
    of saves that did not finish (one process only: with several, the next
    start removes them). A failure here is logged, not raised, so the error
    that stopped the run stays the one reported."""
    try:
      self.close()
    except Exception as e:  # noqa: BLE001
      logging.error("while stopping, the checkpoint save in flight failed: %s", e)
    if jax.process_count() > 1 or storage.is_remote(self.directory):
      return
    root = storage.path(self.directory)
    for d in (root.iterdir() if root.exists() else []):
      if TMP_MARK in d.name:
        logging.warning("removing %s, a checkpoint save that did not finish", d)
        d.rmtree(missing_ok=True)


def restore_params(path: str, abstract_params):
  """Params only, from a workdir (latest checkpoint), a checkpoints dir or one
  step dir; onto the shardings `abstract_params` carries (ShapeDtypeStructs).
  A checkpoint of the other layer layout (unrolled vs scanned stacks) is read
  in its own layout and converted (metalm_jax/models/layout.py). A checkpoint
  without LoRA adapters read for a model with them returns the params
  without the adapters (the caller keeps fresh ones: models/lora.py
  fill_missing)."""
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
  state_dir = storage.path(step_dir) / "state"
  checkpointer = ocp.PyTreeCheckpointer()
  meta = checkpointer.metadata(state_dir)
  saved = _plain(getattr(meta, "item_metadata", meta)["params"])
  if lora_lib.has_adapters(abstract_params) and not lora_lib.has_adapters(saved):
    abstract_params, _ = lora_lib.split(abstract_params)
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
