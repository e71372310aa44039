"""The run's config.json and config drift on resume.

WORKDIR/config.json holds the config of the run whose checkpoints live there
(export and evaluation read it). The trainer rewrites it (run_files.py) only after a
successful restore (or a fresh start), so a restart that fails leaves the
old file in place.

On a restart over a checkpoint, the new config is compared with config.json
before anything compiles. A field in RESUMABLE may change (the change is
logged); any other difference (model.*, data contents, tokenizer, seq_len,
seed, batch size, optimizer maths, ...) stops the run with one line per
differing field:

    model.decoder.activation: gelu (checkpoint) != relu (now)
"""
from __future__ import annotations

import fnmatch
import json
import logging
from typing import Any, Dict, List, Mapping, Optional, Tuple

from metalm_jax import config_names, storage
from metalm_jax import run_files

RUN_CONFIG_FILE = run_files.RUN_CONFIG_FILE

# Fields that may change when a run resumes (a prefix covers its sub-fields).
RESUMABLE = (
    "total_steps", "log", "eval_loss",
    "max_nonfinite_steps", "loss_spike",
    "checkpoint",                       # every_steps, keep, async_save, restore_fallback
    "evals",                            # evaluators and their schedules
    "optimizer.lr", "optimizer.warmup_steps", "optimizer.decay", "optimizer.end_lr_frac",
    "optimizer.grad_accum_steps",       # the same batch, split differently
    "model.decoder.loss_chunk",         # the same loss, computed in chunks of positions
    "mesh", "logical_rules", "sharding",  # layout: a checkpoint restores onto another mesh
    "metrics", "compilation_cache_dir",
    "init_from", "init_components",     # unused on resume: the checkpoint wins
    "data.data_dir", "data.manual_dirs",  # where the files are, not what they hold
    "data.read_threads", "data.prefetch_buffer", "data.skip_corrupt_records",
)

# Sections added after runs were written: absent from an older run's
# config.json, a section is no drift while it is off (`enabled` False).
ADDED_SECTIONS = ("model.decoder.lora",)
# Fields added after runs were written, with the value that builds the model
# those runs had: absent from an older config.json, a field at this value is
# no drift (`*` matches an encoder name).
ADDED_FIELDS = {
    "model.decoder.norm_type": "layer", "model.decoder.mlp": "dense",
    "model.decoder.num_kv_heads": 0, "model.decoder.qkv_bias": False,
    "model.decoder.rope_theta": 10000.0, "model.decoder.rope_scaling": {},
    "model.decoder.embed_scale": 1.0, "model.encoders.*.readout": "tokens",
    "model.decoder.loss_chunk": 0,
}

_ABSENT = object()


class ConfigDriftError(ValueError):
  """The new config changes fields that the checkpoint depends on."""


def load(workdir) -> Optional[Dict[str, Any]]:
  """WORKDIR/config.json as written (the tokenizer by its name in the
  workdir), with renamed fields under their new names (config_names.py)."""
  p = storage.join(workdir, RUN_CONFIG_FILE)
  if not storage.exists(p):
    return None
  saved, moved = config_names.migrate_tree(storage.read_json(p))
  if moved:
    logging.info("%s: read renamed fields under their new names: %s", p, ", ".join(moved))
  return saved


def flatten(tree: Mapping[str, Any], prefix: str = "") -> Dict[str, Any]:
  """{'a': {'b': 1}} -> {'a.b': 1}; lists are values."""
  out = {}
  for k, v in tree.items():
    name = f"{prefix}{k}"
    if isinstance(v, Mapping) and v:
      out.update(flatten(v, name + "."))
    else:
      out[name] = v
  return out


def is_resumable(field: str) -> bool:
  return any(field == p or field.startswith(p + ".") for p in RESUMABLE)


def _show(v) -> str:
  if v is _ABSENT:
    return "<absent>"
  return v if isinstance(v, str) else json.dumps(v, sort_keys=True)


def diff(saved: Mapping[str, Any], now: Mapping[str, Any]) -> List[Tuple[str, Any, Any]]:
  """(field, saved value, new value) for every differing leaf field; an
  ADDED_SECTIONS section the saved config lacks counts only when it is on,
  an ADDED_FIELDS field only when it differs from the old behaviour."""
  a, b = flatten(saved), flatten(now)
  for sec in ADDED_SECTIONS:
    inside = lambda k, sec=sec: k == sec or k.startswith(sec + ".")
    if b.get(f"{sec}.enabled") is False and not any(inside(k) for k in a):
      b = {k: v for k, v in b.items() if not inside(k)}
  out = []
  for k in sorted(set(a) | set(b)):
    va, vb = a.get(k, _ABSENT), b.get(k, _ABSENT)
    if va is _ABSENT and any(fnmatch.fnmatchcase(k, pat) and vb == legacy
                             for pat, legacy in ADDED_FIELDS.items()):
      continue  # a field added since, at the value the old run had
    if va != vb:
      out.append((k, va, vb))
  return out


def check_resume(workdir, now: Mapping[str, Any]) -> List[str]:
  """Compares `now` with WORKDIR/config.json; raises ConfigDriftError listing
  every non-resumable difference; returns the resumable ones (also logged)."""
  saved = load(workdir)
  if saved is None:
    logging.warning("%s is missing: the restart's config is not compared with the run's",
                    storage.join(workdir, RUN_CONFIG_FILE))
    return []
  changes = diff(saved, now)
  fatal = [f"{k}: {_show(a)} (checkpoint) != {_show(b)} (now)"
           for k, a, b in changes if not is_resumable(k)]
  if fatal:
    raise ConfigDriftError(
        f"the config differs from the run in {storage.join(workdir, RUN_CONFIG_FILE)} in fields "
        "that change the model "
        "or the data; use a new workdir (with init_from=) or restore these values:\n  " +
        "\n  ".join(fatal))
  lines = [f"{k}: {_show(a)} (checkpoint) -> {_show(b)} (now)" for k, a, b in changes]
  for line in lines:
    logging.warning("config changed on resume: %s", line)
  return lines
