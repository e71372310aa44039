"""A tiny name -> object registry, so configs pick components by name."""
from __future__ import annotations

from typing import Any, Callable, Dict, Iterator, Optional


class Registry:
  """Maps names to objects; `register` is usable as a decorator. `fallback`
  (name -> object or None) answers names nobody registered (families of names
  made from data, e.g. the sources of a built data set); iteration lists the
  registered names only."""

  def __init__(self, kind: str, fallback: Optional[Callable[[str], Any]] = None):
    self.kind = kind
    self._items: Dict[str, Any] = {}
    self._fallback = fallback

  def register(self, name: str) -> Callable[[Any], Any]:
    def deco(obj):
      if name in self._items:
        raise ValueError(f"{self.kind} {name!r} is registered twice")
      self._items[name] = obj
      return obj
    return deco

  def _find(self, name: str) -> Any:
    if name in self._items:
      return self._items[name]
    return self._fallback(name) if self._fallback else None

  def get(self, name: str) -> Any:
    found = self._find(name)
    if found is None:
      raise KeyError(f"unknown {self.kind} {name!r}; known: {sorted(self._items)}")
    return found

  def __contains__(self, name: str) -> bool:
    return self._find(name) is not None

  def registered(self, name: str) -> bool:
    """True for a name registered here (not one the fallback answers)."""
    return name in self._items

  def __iter__(self) -> Iterator[str]:
    return iter(sorted(self._items))
