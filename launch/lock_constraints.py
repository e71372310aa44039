"""Writes constraints.txt: the exact versions, as installed in a venv, of every
distribution that `metalm_jax[EXTRAS]` pulls (its requirements in setup.py
and theirs, recursively, markers evaluated). metalm_jax itself is left out.

  .venv/bin/python launch/lock_constraints.py > constraints.txt        # extras: test
  .venv/bin/python launch/lock_constraints.py --extras=test,plot

A local version label (torch's `+cpu`) is dropped: it names a build variant,
not a version, and launch/setup_venv.sh chooses the variant.
"""
import argparse
import importlib.metadata as md
import os
import runpy
import sys

import setuptools
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def project_requirements(extras):
  """install_requires + the named extras of ROOT/setup.py, as Requirement objects."""
  seen = {}
  real_setup = setuptools.setup
  setuptools.setup = lambda **kw: seen.update(kw)
  try:
    runpy.run_path(os.path.join(ROOT, "setup.py"))
  finally:
    setuptools.setup = real_setup
  reqs = list(seen["install_requires"])
  for e in extras:
    if e not in seen["extras_require"]:
      raise SystemExit(f"--extras: {e!r} is not an extra of setup.py "
                       f"({sorted(seen['extras_require'])})")
    reqs += seen["extras_require"][e]
  return [Requirement(r) for r in reqs]


def closure(roots):
  """{canonical name: installed version} of roots and everything they require."""
  pinned, todo = {}, [(r, set(r.extras)) for r in roots]
  done = set()
  while todo:
    req, extras = todo.pop()
    name = canonicalize_name(req.name)
    key = (name, frozenset(extras))
    if key in done:
      continue
    done.add(key)
    try:
      dist = md.distribution(req.name)
    except md.PackageNotFoundError:
      raise SystemExit(
          f"{req.name} (required as {req}) is not installed in {sys.prefix}") from None
    pinned[name] = dist.version
    for line in dist.requires or []:
      sub = Requirement(line)
      env = [{"extra": e} for e in extras] or [{"extra": ""}]
      if sub.marker is None or any(sub.marker.evaluate(x) for x in env):
        todo.append((sub, set(sub.extras)))
  return pinned


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--extras", default="test", help="comma-separated extras of setup.py")
  args = p.parse_args()
  pinned = closure(project_requirements([e for e in args.extras.split(",") if e]))
  pinned.pop("metalm-jax", None)
  print(f"# pip install -c constraints.txt: the exact set the tests ran with "
        f"(metalm_jax[{args.extras}], Python {sys.version_info.major}.{sys.version_info.minor}).")
  print("# Regenerate: .venv/bin/python launch/lock_constraints.py > constraints.txt")
  for name in sorted(pinned):
    print(f"{name}=={Version(pinned[name]).public}")


if __name__ == "__main__":
  main()
