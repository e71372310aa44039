"""benchmarks/profile_step.py's accounting: the timeline (time with no thunk
running), and the matmul shapes and FLOPs benchmarks/hlo_dots.py reads from
compiled HLO."""
import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import hlo_dots
from benchmarks import profile_step as ps


def test_timeline_splits_wall_time_into_busy_and_idle():
  # Two overlapping thunks (0-10, 5-15 µs), a gap, one more (30-35); 'dot.7' is an Eigen dot.
  events = [("fusion.1", 0.0, 10.0), ("dot.7", 5.0, 10.0), ("ynn_fusion.2", 30.0, 5.0)]
  t = ps.timeline(events, steps=1)
  assert t["span"] == pytest.approx(0.035)
  assert t["thunks_running"] == pytest.approx(0.020)
  assert t["no_thunk_running"] == pytest.approx(0.015)
  assert t["thunks_per_step"] == 3 and t["eigen_dots_per_step"] == 1
  half = ps.timeline(events, steps=2)
  assert half["no_thunk_running"] == pytest.approx(0.0075)


@pytest.mark.parametrize("spec,shapes,desc", [
    ("mk,kn->mn", ((48, 32), (32, 24)), "48 x 32 x 24"),
    ("bmk,bkn->bmn", ((3, 16, 32), (3, 32, 8)), "3 x 16 x 32 x 8"),
    ("mk,mn->kn", ((40, 16), (40, 24)), "16 x 40 x 24"),  # a weight gradient
])
def test_dot_shapes_reads_flops_and_dims_from_compiled_hlo(spec, shapes, desc):
  args = [jnp.ones(s, jnp.float32) for s in shapes]
  hlo = jax.jit(lambda a, b: jnp.einsum(spec, a, b)).lower(*args).compile().as_text()
  found = hlo_dots.dot_shapes(hlo)
  ops = ps.hlo_ops(hlo)
  # The thunk that computes the dot (a fusion or a plain dot) is named, with
  # the einsum's FLOPs: 2 x the product of all distinct dims.
  dims = {d: n for s, sub in zip(shapes, spec.split("->")[0].split(",")) for d, n in zip(sub, s)}
  flops = 2 * int(np.prod(list(dims.values())))
  entry = hlo[hlo.index("ENTRY"):]
  thunks = [n for n in found if f"%{n} = " in entry and n in ops]
  assert len(thunks) == 1, (thunks, entry)
  assert found[thunks[0]] == (flops, desc)


def test_executed_dots_lists_each_dot_once():
  """Three dots (one batched, one a weight gradient's layout, one feeding a
  fused elementwise op): three entries with their dims, none counted twice
  for the fusion that holds it; a program without a dot lists none."""
  a, w = jnp.ones((48, 32)), jnp.ones((32, 24))
  x, y = jnp.ones((3, 16, 32)), jnp.ones((3, 32, 8))
  g = jnp.ones((48, 24))

  def f(a, w, x, y, g):
    return jnp.tanh(a @ w) + 1.0, jnp.einsum("bmk,bkn->bmn", x, y), a.T @ g

  hlo = jax.jit(f).lower(a, w, x, y, g).compile().as_text()
  found = sorted(hlo_dots.executed_dots(hlo), key=lambda d: d[1])
  assert found == sorted([(2 * 48 * 32 * 24, "48 x 32 x 24"),
                          (2 * 3 * 16 * 32 * 8, "3 x 16 x 32 x 8"),
                          (2 * 32 * 48 * 24, "32 x 48 x 24")], key=lambda d: d[1])
  none = jax.jit(lambda a: jnp.tanh(a) * 2).lower(a).compile().as_text()
  assert hlo_dots.executed_dots(none) == []


def test_matmul_floor_programs_run_the_listed_dots():
  """benchmarks/matmul_floor.py: each listed dot becomes one plain product of
  the listed dims, the same operands in the XLA and the torch program; the
  products equal numpy's (float64 reference, float32 tolerance)."""
  from benchmarks import matmul_floor
  dots = [(2 * 48 * 32 * 24, "48 x 32 x 24"), (2 * 3 * 16 * 32 * 8, "3 x 16 x 32 x 8")]
  ops = matmul_floor.plain_operands(dots, seed=3)
  assert [(a.shape, b.shape) for a, b in ops] == [((48, 32), (32, 24)),
                                                 ((3, 16, 32), (3, 32, 8))]
  fn, operands = matmul_floor.floor_program(dots, seed=3)
  for got, (a, b) in zip(fn(operands), ops):
    np.testing.assert_allclose(np.asarray(got), a.astype(np.float64) @ b, rtol=1e-4, atol=1e-4)
  if importlib.util.find_spec("torch") is not None:
    matmul_floor.torch_floor_program(dots, seed=3)()
