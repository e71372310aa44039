"""The grid of a sweep: parse `--grid`, check every field against the config,
expand it into runs with stable, filesystem-safe names.

    "data.spans.ratio=0.15,0.25;model.encoders.text.connector.type=linear,mlp"

';' separates axes, ',' the values of one axis (so a value holds neither).
Runs are the product of the axes in the order given, the last axis varying
fastest. Values are parsed exactly as `python -m metalm_jax.main` parses
`--config.<field>=<value>` (ml_collections config flags: the type of the
field in the config decides), by loading the config with the overrides, so a
field that does not exist or a value of the wrong type is an error naming
the axis before any run starts.
"""
from __future__ import annotations

import ast
import dataclasses
import hashlib
import itertools
import json
import re
from typing import Any, Dict, List, Sequence, Tuple

from absl import flags
from ml_collections import config_flags

from metalm_jax import config_names

# A run named from no override at all (a grid without axes).
BASE_NAME = "base"
# Longer names keep this many characters and end with a hash of the full name.
MAX_NAME = 120
_UNSAFE = re.compile(r"[^A-Za-z0-9._=,+-]")


class SweepError(ValueError):
  """A bad grid, override or sweep directory; the message names it."""


@dataclasses.dataclass(frozen=True)
class Axis:
  field: str                # dotted config path, e.g. "data.spans.ratio"
  values: Tuple[str, ...]   # as typed on the command line


@dataclasses.dataclass
class Run:
  name: str
  overrides: Dict[str, str]   # field -> value as typed, in axis order
  values: Dict[str, Any]      # field -> the value the config holds (parsed)
  total_steps: int


def _field(text: str, where: str) -> str:
  """'config.a.b' / '--config.a.b' / 'a.b' -> 'a.b' (checked for shape only;
  a renamed field under its new name, config_names.py)."""
  field = re.sub(r"^(--)?config\.", "", text.strip())
  if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*", field):
    raise SweepError(f"{where}: {text!r} is not a config field (like data.spans.ratio)")
  return config_names.new_field(field)


def parse_grid(text: str) -> List[Axis]:
  """'a=1,2;b=x,y' -> [Axis('a', ('1', '2')), Axis('b', ('x', 'y'))]."""
  axes: List[Axis] = []
  for part in (p.strip() for p in (text or "").split(";")):
    if not part:
      continue
    key, eq, vals = part.partition("=")
    if not eq:
      raise SweepError(f"--grid axis {part!r}: expected FIELD=V1,V2,...")
    field = _field(key, f"--grid axis {part!r}")
    values = tuple(v.strip() for v in vals.split(","))
    if any(not v for v in values):
      raise SweepError(f"--grid axis {field}: empty value in {vals!r}")
    if len(set(values)) != len(values):
      raise SweepError(f"--grid axis {field}: a value repeats in {vals!r}")
    for other in axes:
      if field == other.field or field.startswith(other.field + ".") or \
          other.field.startswith(field + "."):
        raise SweepError(f"--grid axes {other.field} and {field} set the same field")
    axes.append(Axis(field, values))
  return axes


def parse_fixed(items: Sequence[str]) -> List[Tuple[str, str]]:
  """--set values ('total_steps=50') and trailing '--config.x=y' args ->
  [(field, value)]; the last one of a field wins, as on main's command line."""
  out: Dict[str, str] = {}
  for item in items:
    key, eq, value = item.partition("=")
    if not eq:
      raise SweepError(f"fixed override {item!r}: expected FIELD=VALUE")
    field = _field(key, f"fixed override {item!r}")
    out.pop(field, None)
    out[field] = value
  return list(out.items())


def flag(field: str, value: str) -> str:
  return f"--config.{field}={value}"


def run_name(overrides: Dict[str, str]) -> str:
  """'field=value,field=value' with unsafe characters as '_'; a long name is
  cut and ends with a hash of the whole, so names stay unique and stable."""
  if not overrides:
    return BASE_NAME
  full = ",".join(f"{k}={v}" for k, v in overrides.items())
  name = _UNSAFE.sub("_", full)
  if len(name) > MAX_NAME:
    name = name[:MAX_NAME - 13] + "-" + hashlib.sha1(full.encode()).hexdigest()[:12]
  return name


def _message(e: Exception) -> str:
  """One line from a flag/config error (KeyError / AttributeError hold a
  quoted repr)."""
  msg = str(e)
  try:
    unquoted = ast.literal_eval(msg)
  except (ValueError, SyntaxError):
    unquoted = None
  return " ".join((unquoted if isinstance(unquoted, str) else msg).split())


def load_config(config: str, overrides: Sequence[Tuple[str, str]]):
  """(ConfigDict, {field: parsed value}) as `main --config=CONFIG
  --config.F=V ...` would build it (ml_collections config flags)."""
  argv = ["sweep", f"--config={config}", *(flag(f, v) for f, v in overrides)]
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "config file[:arg]", flag_values=fv,
                                  lock_config=True, sys_argv=argv)
  fv(argv)
  cfg = fv.config
  return cfg, dict(config_flags.get_override_values(fv["config"]))


def _jsonable(v: Any) -> Any:
  return json.loads(json.dumps(v, default=str))


def _check(config: str, overrides, where: str):
  try:
    return load_config(config, overrides)
  except (AttributeError, KeyError) as e:
    if not overrides:  # the config file itself fails, not a field
      raise SweepError(f"{where}: the config does not load ({_message(e)})") from e
    raise SweepError(f"{where}: no such field in {config} ({_message(e)})") from e
  except Exception as e:  # noqa: BLE001  flag parsing, the config file itself
    raise SweepError(f"{where}: {_message(e)}") from e


def expand(config: str, axes: Sequence[Axis], fixed: Sequence[Tuple[str, str]]) -> List[Run]:
  """Every run of the grid, after checking each override against the config
  (fixed ones first, then each axis value alone, then each combination)."""
  fixed_fields = {f for f, _ in fixed}
  for ax in axes:
    if ax.field in fixed_fields:
      raise SweepError(f"--grid axis {ax.field} is also a fixed override (--set / --config.*)")
  _check(config, [], f"--config={config}")
  for f, v in fixed:
    _check(config, [(f, v)], f"fixed override {flag(f, v)}")
  for ax in axes:
    for v in ax.values:
      _check(config, [*fixed, (ax.field, v)], f"--grid axis {ax.field} value {v!r}")
  runs, names = [], {}
  for combo in itertools.product(*(ax.values for ax in axes)):
    overrides = {ax.field: v for ax, v in zip(axes, combo)}
    cfg, parsed = _check(config, [*fixed, *overrides.items()],
                         "run " + ",".join(f"{k}={v}" for k, v in overrides.items()))
    name = run_name(overrides)
    if name in names:
      raise SweepError(f"runs {names[name]} and {overrides} get the same name {name!r} "
                       "(values that differ only in unsafe characters)")
    names[name] = overrides
    runs.append(Run(name, overrides, {k: _jsonable(parsed[k]) for k in overrides},
                    int(cfg.total_steps)))
  return runs
