"""Renamed run-config fields: the one table of old -> new names, and the
migrations that keep old command lines, sweeps and workdirs working.

Every cadence of the run config is a section's `every_steps` (`log`,
`eval_loss`, `checkpoint`, `evals.<name>`). Fields written before that:

    log_every        -> log.every_steps
    eval_every       -> eval_loss.every_steps
    eval_batches     -> eval_loss.num_batches
    eval_batch_size  -> eval_loss.batch_size

- A command line (`--config.log_every=5`, a sweep's `--set=eval_every=200`)
  is rewritten to the new name with a logged note (`migrate_flag`).
- A stored run config (WORKDIR/config.json) or sweep spec is read with the
  new names (`migrate_tree`), so an old workdir resumes without drift.
- A config file that still assigns an old field is refused by the trainer's
  checks, naming the new field (`old_fields`): it would be silently ignored.
"""
from __future__ import annotations

import copy
import logging
from typing import Any, Dict, List, Mapping, Sequence, Tuple

RENAMED = {
    "log_every": "log.every_steps",
    "eval_every": "eval_loss.every_steps",
    "eval_batches": "eval_loss.num_batches",
    "eval_batch_size": "eval_loss.batch_size",
}


def new_field(field: str) -> str:
  """`field` (dotted) with a renamed head replaced; others unchanged."""
  for old, new in RENAMED.items():
    if field == old or field.startswith(old + "."):
      return new + field[len(old):]
  return field


def migrate_flag(arg: str, prefix: str = "--config.") -> str:
  """'--config.log_every=5' -> '--config.log.every_steps=5' (logged);
  anything else is returned as it is."""
  if not arg.startswith(prefix):
    return arg
  field, eq, value = arg[len(prefix):].partition("=")
  new = new_field(field)
  if new == field:
    return arg
  logging.warning("%s%s is now %s%s; read as the new name", prefix, field, prefix, new)
  return f"{prefix}{new}{eq}{value}"


def migrate_argv(argv: Sequence[str]) -> List[str]:
  return [migrate_flag(a) for a in argv]


def migrate_tree(tree: Mapping[str, Any]) -> Tuple[Dict[str, Any], List[str]]:
  """A stored config dict with old top-level fields moved to their new place
  (a value already there wins); returns (new dict, ['old -> new', ...])."""
  out = copy.deepcopy(dict(tree))
  moved = []
  for old, new in RENAMED.items():
    if old not in out:
      continue
    value = out.pop(old)
    *parents, leaf = new.split(".")
    node = out
    for p in parents:
      node = node.setdefault(p, {})
    node.setdefault(leaf, value)
    moved.append(f"{old} -> {new}")
  return out, moved


def old_fields(config: Mapping[str, Any]) -> List[str]:
  """'old (now new)' for each renamed field a config still holds."""
  return [f"{old} (now {new})" for old, new in RENAMED.items() if old in config]
