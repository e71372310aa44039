"""A tiny name -> object registry, so configs pick components by name."""
from __future__ import annotations

from typing import Any, Callable, Dict, Iterator


class Registry:
  """Maps names to objects; `register` is usable as a decorator."""

  def __init__(self, kind: str):
    self.kind = kind
    self._items: Dict[str, Any] = {}

  def register(self, name: str) -> Callable[[Any], Any]:
    def deco(obj):
      if name in self._items:
        raise ValueError(f"{self.kind} {name!r} is registered twice")
      self._items[name] = obj
      return obj
    return deco

  def get(self, name: str) -> Any:
    try:
      return self._items[name]
    except KeyError:
      raise KeyError(
          f"unknown {self.kind} {name!r}; known: {sorted(self._items)}") from None

  def __contains__(self, name: str) -> bool:
    return name in self._items

  def __iter__(self) -> Iterator[str]:
    return iter(sorted(self._items))
