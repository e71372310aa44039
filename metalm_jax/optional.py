"""Imports of packages that live in a setup.py extra, not the core install.

`require("matplotlib", "plot")` returns the module, or raises an ImportError
that names the extra to install, instead of a bare ModuleNotFoundError deep in
a call.
"""
import importlib
from types import ModuleType

# Top-level module -> the extras of setup.py that install it.
EXTRAS = {
    "matplotlib": ("plot", "notebook"),
    "tokenizers": ("hf", "notebook"),
    "av": ("media",),
    "fastapi": ("serve",),
    "uvicorn": ("serve",),
}


def require(module: str, what: str) -> ModuleType:
  """Imports `module` (dotted names allowed); `what` says what needs it."""
  top = module.partition(".")[0]
  try:
    return importlib.import_module(module)
  except ModuleNotFoundError as e:
    if e.name != top:  # the package is there but one of its own imports failed
      raise
    extras = EXTRAS.get(top)
    if extras is None:
      raise ValueError(f"module {top!r} is in no extra of metalm_jax ({sorted(EXTRAS)})") from e
    hint = " or ".join(f"pip install 'metalm_jax[{x}]'" for x in extras)
    raise ImportError(f"{what} needs the {top!r} package, which is not installed: {hint}") from e
