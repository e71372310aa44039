"""Where evaluation runs: the trainer's mesh, its logical-axis rules and its
param shardings (params stay sharded; nothing gathers them onto a host).

A global batch of `global_batch_size(n)` rows is split over the mesh's batch
axes (the logical rules' `act_batch`, data x fsdp in the shipped configs);
each process supplies only the rows its devices hold (`process_rows`), and
the outputs, sharded the same way, are gathered to every process as numpy
(`gather`). `map_rows` runs a jitted function over any number of items this
way: the last global batch is padded with copies of the last item and the
padded rows are dropped from the gathered result.

    placement = Placement(trainer.mesh, trainer.rules, trainer.shardings["params"])
    fn = placement.jit(score_fn, model=model)  # in: (params, batch); out: batch-sharded
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import logging
import math
from typing import Any, Callable, Dict, List, Sequence, Tuple

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from metalm_jax import sharding as shard_lib
from metalm_jax.models import metalm

BATCH_AXIS = "act_batch"  # the logical name of the batch dimension of activations
DEFAULT_RULES = ((BATCH_AXIS, ("data", "fsdp")),)  # configs without logical_rules
_BARRIER_TIMEOUT_MS = 3_600_000


@dataclasses.dataclass(frozen=True, eq=False)
class Placement:
  mesh: Mesh
  rules: Tuple[Tuple[str, Any], ...]
  params: Any  # NamedSharding per leaf of the (unboxed) params

  def _key(self):
    leaves, treedef = jax.tree.flatten(self.params,
                                       is_leaf=lambda x: isinstance(x, NamedSharding))
    return (self.mesh, tuple(self.rules), treedef, tuple(leaves))

  def __hash__(self):
    return hash(self._key())

  def __eq__(self, other):
    return isinstance(other, Placement) and self._key() == other._key()

  @classmethod
  def from_config(cls, config, model) -> "Placement":
    """The run config's mesh (all devices) and logical rules; param
    shardings from the model's logical axis names (as the trainer derives
    them). A mesh that does not fit the devices here (a run config from
    another machine) becomes data parallel over all of them."""
    data_parallel = dict(data=-1, fsdp=1, tensor=1)
    try:
      mesh = shard_lib.make_mesh(config.get("mesh") or data_parallel)
    except ValueError as e:
      logging.info("evaluation: %s; using mesh %s", e, data_parallel)
      mesh = shard_lib.make_mesh(data_parallel)
    rules = (shard_lib.rules_from_config(config.logical_rules) if config.get("logical_rules")
             else DEFAULT_RULES)
    boxed = metalm.abstract_variables(model)["params"]
    return cls(mesh, tuple(rules), shard_lib.logical_shardings(boxed, mesh, rules))

  # ---- shardings ------------------------------------------------------------
  @functools.cached_property
  def batch(self) -> NamedSharding:
    """Leading dimension over the mesh axes the rules give `act_batch`."""
    return nn.logical_to_mesh_sharding(PartitionSpec(BATCH_AXIS), self.mesh, self.rules)

  @functools.cached_property
  def replicated(self) -> NamedSharding:
    return NamedSharding(self.mesh, PartitionSpec())

  @functools.cached_property
  def shards(self) -> int:
    """How many ways the batch dimension is split."""
    dim = self.batch.spec[0] if len(self.batch.spec) else None
    axes = () if dim is None else (dim if isinstance(dim, tuple) else (dim,))
    return math.prod(self.mesh.shape[a] for a in axes)

  def global_batch_size(self, batch_size: int) -> int:
    """`batch_size` rounded up to a multiple of the batch shards."""
    if batch_size < 1:
      raise ValueError(f"evals.*.batch_size={batch_size} must be >= 1")
    return -(-batch_size // self.shards) * self.shards

  @functools.lru_cache(maxsize=None)  # noqa: B019  a few Placements live for the whole run
  def process_rows(self, rows: int) -> Tuple[int, ...]:
    """Rows of a [rows, ...] batch-sharded array held by this process's devices."""
    index = self.batch.addressable_devices_indices_map((rows,))
    return tuple(sorted({r for (sl,) in index.values() for r in range(*sl.indices(rows))}))

  # ---- data in and out ------------------------------------------------------
  def put_params(self, params):
    """Params onto their shardings (no copy for arrays already there)."""
    return jax.device_put(params, self.params)

  def global_array(self, local_tree, row_ids: Sequence[int], rows: int):
    """Global batch-sharded arrays of `rows` rows from this process's numpy
    rows; local row i is global row row_ids[i]."""
    where = {r: i for i, r in enumerate(row_ids)}

    def one(x):
      x = np.asarray(x)

      def piece(index):
        take = [where[r] for r in range(*index[0].indices(rows))]
        return x[take][(slice(None),) + tuple(index[1:])]

      return jax.make_array_from_callback((rows,) + x.shape[1:], self.batch, piece)

    return jax.tree.map(one, local_tree)

  @staticmethod
  def gather(tree):
    """Batch-sharded global arrays -> full numpy arrays on every process."""
    return shard_lib.to_host(tree)

  # ---- jitted functions -----------------------------------------------------
  def jit(self, fn: Callable, replicated_args: int = 0, replicated_out: bool = False, **static):
    """jax.jit of fn(params, batch, *others, **static) with explicit shardings:
    params as placed, batch (a tree of [B, ...] arrays) and every output over
    the batch axes (replicated with `replicated_out`: sums over the batch),
    the `replicated_args` other arguments replicated. One jit per
    (placement, fn, static values)."""
    return _jit(self, fn, replicated_args, replicated_out, tuple(sorted(static.items())))

  @contextlib.contextmanager
  def context(self):
    """The mesh and the logical-axis rules, for tracing and calling model code."""
    with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
      yield

  def call(self, jitted, *args):
    """Calls a function from `jit`, compiled ahead on first use of each shape;
    with several processes all of them wait for each other's compilation
    first (a collective must not wait out another process's compile: Gloo's
    set-up times out after 30 s). Arguments made elsewhere (a scalar under
    another mesh) move to the declared shardings; those already there are not copied."""
    args = jax.device_put(args, (self.params, self.batch)
                          + (self.replicated,) * (len(args) - 2))
    key = (jitted, jax.tree.structure(args),
           tuple((np.shape(x), str(getattr(x, "dtype", type(x)))) for x in jax.tree.leaves(args)))
    compiled = _COMPILED.get(key)
    if compiled is None:
      with self.context():
        compiled = jitted.lower(*args).compile()
      if jax.process_count() > 1:
        from orbax.checkpoint import multihost as ocp_multihost
        ocp_multihost.get_barrier_sync_fn()(key=f"metalm_eval_compiled_{next(_BARRIERS)}",
                                            timeout_ms=_BARRIER_TIMEOUT_MS)
      _COMPILED[key] = compiled
    with self.context():
      return compiled(*args)


_COMPILED: Dict[Any, Any] = {}
_BARRIERS = itertools.count()


@functools.lru_cache(maxsize=None)
def _jit(placement: Placement, fn, replicated_args: int, replicated_out: bool, static):
  return jax.jit(functools.partial(fn, **dict(static)),
                 in_shardings=(placement.params, placement.batch)
                 + (placement.replicated,) * replicated_args,
                 out_shardings=placement.replicated if replicated_out else placement.batch)


def map_rows(placement: Placement, items: Sequence[Any], batch_size: int,
             build: Callable[[List[Any], List[Any]], Any], run: Callable[[Any], Any],
             rows_per_item: int = 1):
  """Runs `run` over `items` in global batches of
  `placement.global_batch_size(batch_size)` items; returns its gathered
  outputs for the real items, concatenated ([len(items) * rows_per_item, ...]),
  or None when there are no items.

  build(chunk, local) -> numpy tree of len(local) * rows_per_item rows for
    this process's items `local` of the global batch `chunk` (every process
    sees the whole chunk, so shapes that depend on it agree across processes).
  run(global tree) -> tree of batch-sharded arrays, rows_per_item per item.
  """
  n = len(items)
  if not n:
    return None
  size = placement.global_batch_size(batch_size)
  if size != batch_size:
    logging.info("evaluation batch %d padded to %d (a multiple of the %d batch shards)",
                 batch_size, size, placement.shards)
  mine = placement.process_rows(size)
  contiguous = list(mine) == list(range(mine[0], mine[-1] + 1))
  logging.info("evaluation: process %d of %d runs rows %s of every global batch of %d",
               jax.process_index(), jax.process_count(),
               f"{mine[0]}..{mine[-1]}" if contiguous else list(mine), size)
  outs = []
  for start in range(0, n, size):
    chunk = [items[min(start + i, n - 1)] for i in range(size)]  # padded with the last item
    local = build(chunk, [chunk[r] for r in mine])
    ids = [r * rows_per_item + c for r in mine for c in range(rows_per_item)]
    out = placement.gather(run(placement.global_array(local, ids, size * rows_per_item)))
    real = min(size, n - start) * rows_per_item
    outs.append(jax.tree.map(lambda x, real=real: np.asarray(x)[:real], out))
  return jax.tree.map(lambda *xs: np.concatenate(xs, 0), *outs)
