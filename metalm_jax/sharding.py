"""Device mesh (data, fsdp, tensor), logical-axis rules and shard helpers.

Model code names parameter and activation axes logically (see
metalm_jax/models/layers.py); `config.logical_rules` maps them to mesh axes.
"""
from __future__ import annotations

import contextlib
import math
from typing import Any, Dict, Iterator, Sequence, Tuple

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec
from metalm_jax.models import layout

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")


def mesh_shape(mesh_cfg, num_devices: int) -> Tuple[int, ...]:
  """Sizes for MESH_AXES from config; at most one -1, inferred from the device count."""
  sizes = [int(mesh_cfg[a]) for a in MESH_AXES]
  for a, s in zip(MESH_AXES, sizes):
    if s == 0 or s < -1:
      raise ValueError(f"mesh.{a}={s}: expected a positive size or -1 (infer)")
  infer = [a for a, s in zip(MESH_AXES, sizes) if s == -1]
  if len(infer) > 1:
    raise ValueError(f"mesh.{infer[1]}=-1: only one mesh axis may be -1 (also {infer[0]})")
  known = math.prod(s for s in sizes if s != -1)
  if infer:
    if num_devices % known:
      raise ValueError(f"mesh.{infer[0]}=-1 cannot be inferred: {num_devices} devices are not "
                       f"divisible by the other axes' product {known}")
    sizes[sizes.index(-1)] = num_devices // known
  if math.prod(sizes) != num_devices:
    raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices, "
                     f"but {num_devices} are available")
  return tuple(sizes)


def make_mesh(mesh_cfg, devices: Sequence[Any] = None) -> Mesh:
  """`jax.make_mesh` over `devices` (default: all): the device order follows
  the physical topology on TPU, device ids on GPU, the given order on CPU.
  Axis types are Auto (jax.make_mesh defaults to Explicit), which the logical
  axis rules need."""
  devices = list(jax.devices() if devices is None else devices)
  shape = mesh_shape(mesh_cfg, len(devices))
  return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES),
                       devices=devices)


def rules_from_config(rules) -> Tuple[Tuple[str, Any], ...]:
  """[(logical, mesh axes)] -> tuple form; checks the named mesh axes exist."""
  out = []
  for i, rule in enumerate(rules):
    if len(rule) != 2:
      raise ValueError(f"logical_rules[{i}]={rule!r}: expected (logical_name, mesh_axes)")
    name, axes = rule
    axes = tuple(axes) if isinstance(axes, (list, tuple)) else axes
    for a in (axes if isinstance(axes, tuple) else (axes,)):
      if a is not None and a not in MESH_AXES:
        raise ValueError(f"logical_rules[{i}] ({name!r}) names mesh axis {a!r}; "
                         f"known: {MESH_AXES}")
    out.append((name, axes))
  return tuple(out)


@contextlib.contextmanager
def mesh_rules(mesh: Mesh, rules) -> Iterator[None]:
  """`jax.set_mesh(mesh)` plus flax logical-axis rules, as one context: wrap
  tracing and calls of jitted model code."""
  with contextlib.ExitStack() as stack:
    stack.enter_context(jax.set_mesh(mesh))
    stack.enter_context(nn.logical_axis_rules(rules))
    yield


def logical_shardings(boxed_abstract_tree, mesh: Mesh, rules):
  """NamedShardings for an (abstract) tree whose leaves may be boxed; the result
  has the structure of the unboxed tree. Unboxed leaves are replicated."""
  specs = nn.get_partition_spec(boxed_abstract_tree)
  return nn.logical_to_mesh_sharding(specs, mesh, rules)


def state_shardings(boxed_abstract_state, mesh: Mesh, rules):
  """Shardings for the unboxed state {"step", "params", "opt_state", counters},
  read from the boxed abstract state (train/state.py `init_state` on boxed
  params): the optimizer's transforms build Adam's mu / nu by mapping over the
  params, so they carry the params' logical boxes; counters are unboxed and
  replicated."""
  return logical_shardings(boxed_abstract_state, mesh, rules)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension over data x fsdp; the rest replicated."""
  return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def data_shards(mesh: Mesh) -> int:
  return mesh.shape["data"] * mesh.shape["fsdp"]


def global_batch(local_batch, mesh: Mesh):
  """Per-process numpy batch -> global jax.Arrays sharded over the batch axes."""
  sharding = batch_sharding(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
                      local_batch)


def to_host(tree):
  """Global arrays -> full numpy arrays on every process (gathers shards)."""
  if jax.process_count() == 1:
    return jax.tree.map(np.asarray, jax.device_get(tree))
  return multihost_utils.process_allgather(tree, tiled=True)


def unsharded_large_params(params, shardings, mesh: Mesh, min_size: int) -> Dict[str, Tuple]:
  """{name: shape} of params with >= min_size elements that are not split over
  `fsdp` (empty when fsdp == 1). A scanned stack's leaf counts one layer's
  elements: its leading `layers` axis is never sharded, so a stacked bias is
  as small as the unrolled one."""
  if mesh.shape["fsdp"] == 1:
    return {}
  bad = {}
  flat_p = jax.tree_util.tree_flatten_with_path(params)[0]
  flat_s = jax.tree.leaves(shardings, is_leaf=lambda x: isinstance(x, NamedSharding))
  for (path, x), s in zip(flat_p, flat_s):
    name = layout.path_str(path)
    per_layer = x.shape[1:] if layout.is_stacked_name(name) else x.shape
    if math.prod(per_layer) < min_size:
      continue
    axes = [a for dim in s.spec if dim is not None
            for a in (dim if isinstance(dim, tuple) else (dim,))]
    if "fsdp" not in axes:
      bad[name] = tuple(x.shape)
  return bad


def check_large_params_sharded(params, shardings, mesh: Mesh, min_size: int) -> None:
  """Start-up check: with fsdp > 1 every large parameter must be split over fsdp."""
  bad = unsharded_large_params(params, shardings, mesh, min_size)
  if bad:
    raise ValueError(
        f"{len(bad)} parameters with >= {min_size} elements are not sharded over fsdp "
        f"(fix logical_rules or sharding.min_fsdp_size): {sorted(bad.items())[:5]}")
