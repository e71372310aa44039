"""Matmuls read from a compiled XLA module's HLO text: each dot's FLOPs and
dims (`dot_shapes`, by instruction name, what benchmarks/profile_step.py maps
its trace's thunks through) and the dots one execution runs (`executed_dots`,
what benchmarks/matmul_floor.py times alone). No jax import: text in, numbers
out."""
from __future__ import annotations

import collections
import re
from typing import List, Tuple


def _computations(hlo_text: str) -> dict:
  """{computation name: its instruction lines} of a compiled HLO module."""
  comps, cur = collections.defaultdict(list), None
  for line in hlo_text.splitlines():
    m = re.match(r"^(?:ENTRY )?%([\w.\-]+) \(", line)
    if m:
      cur = m.group(1)
    elif cur is not None:
      comps[cur].append(line)
  return comps


_SHAPE = r"(?:f32|bf16|f16|f64)\[([\d,]*)\]"


def _ints(text: str) -> list:
  return [int(d) for d in text.split(",") if d]


def _prod(xs) -> int:
  out = 1
  for x in xs:
    out *= x
  return out


def _dot(line: str, shapes: dict):
  """(FLOPs, description) of an HLO dot instruction line, its operands'
  shapes from `shapes`; None for any other line."""
  m = re.search(_SHAPE + r"\{[\d,]*\} dot\(%([\w.\-]+), %([\w.\-]+)\)(.*)", line)
  if not m or m.group(2) not in shapes or m.group(3) not in shapes:
    return None
  lhs, rhs = shapes[m.group(2)], shapes[m.group(3)]

  def field(name):
    f = re.search(name + r"=\{([\d,]*)\}", m.group(4))
    return _ints(f.group(1)) if f else []

  lb, lc, rb, rc = (field(f) for f in ("lhs_batch_dims", "lhs_contracting_dims",
                                         "rhs_batch_dims", "rhs_contracting_dims"))
  batch, k = _prod(lhs[i] for i in lb), _prod(lhs[i] for i in lc)
  m_ = _prod(d for i, d in enumerate(lhs) if i not in lb + lc)
  n_ = _prod(d for i, d in enumerate(rhs) if i not in rb + rc)
  return 2 * batch * m_ * k * n_, (f"{batch} x " if batch > 1 else "") + f"{m_} x {k} x {n_}"


_INSTRUCTION = re.compile(r"\s*(?:ROOT )?%([\w.\-]+) = (.*)")


def dot_shapes(hlo_text: str) -> dict:
  """{thunk name: (FLOPs, "M x K x N" or "batch x M x K x N")} for every
  instruction that is a dot or a fusion whose computation holds one: M, N the
  free sizes, K the contracted, batch the batch dims' product."""
  return _dot_shapes(_computations(hlo_text))


def _dot_shapes(comps: dict) -> dict:
  shapes = {}
  for name, lines in comps.items():
    shapes[name] = {}
    for line in lines:
      m = re.match(r"\s*(?:ROOT )?%([\w.\-]+) = " + _SHAPE, line)
      if m:
        shapes[name][m.group(1)] = _ints(m.group(2))
  first_dot = {}
  for name, lines in comps.items():
    first_dot[name] = next((d for d in (_dot(ln, shapes[name]) for ln in lines) if d), None)
  out = {}
  for comp, lines in comps.items():
    for line in lines:
      m = _INSTRUCTION.match(line)
      if not m:
        continue
      called = re.search(r"calls=%([\w.\-]+)", m.group(2))
      found = first_dot.get(called.group(1)) if called else _dot(line, shapes[comp])
      if found:
        out[m.group(1)] = found
  return out


def executed_dots(hlo_text: str) -> List[Tuple[int, str]]:
  """(FLOPs, dims) of every dot one execution of the module runs: plain dot
  instructions and fusions holding one, outside the bodies of fusions (a
  fused dot is counted once, at its fusion). A loop body's dots are listed
  once, both branches of a conditional's (the train step has neither around
  a dot: layers unrolled, the update's cond holds no matmul)."""
  comps = _computations(hlo_text)
  bodies, where = set(), {}
  for comp, lines in comps.items():
    for line in lines:
      m = _INSTRUCTION.match(line)
      if not m:
        continue
      where[m.group(1)] = comp
      called = re.search(r"calls=%([\w.\-]+)", m.group(2))
      if called and re.search(r"\bfusion\(", m.group(2)):
        bodies.add(called.group(1))
  return [v for name, v in _dot_shapes(comps).items() if where.get(name) not in bodies]
