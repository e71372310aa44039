"""A run's workdir, in one place (the trainer writes it; export, the
Predictor, evaluation, sweeps and the notebook read it):

    config.json            the run config (`write_run_config`, `load_run_config`)
    tokenizer.model|.json  a copy of the run's tokenizer (with a tokenizer.json's
                           HF side files: special_tokens_map.json, ...)
    final_metrics.json     the final metrics (`write_results`)
    metrics.jsonl          one line per log / eval step (train/metrics_log.py)
    checkpoints/<step>/    Orbax steps (train/checkpoint.py)
    checkpoints_diverged/  steps set aside after a divergence (train/divergence.py)
    evals/                 evaluator results and predictions per step
    profile/, tensorboard/ traces and events

A workdir is portable: config.json names the tokenizer by a file name inside
the workdir (`data.tokenizer: "tokenizer.model"`), so a workdir copied to
another machine, or read from gs:// in Colab, loads with `load_run_config`,
which turns that name back into a full path.
"""
from __future__ import annotations

import json
from typing import Any, Dict, Optional

from metalm_jax import config_names, storage
from metalm_jax.data import hf_tokenizer

RUN_CONFIG_FILE = "config.json"
RESULTS_FILE = "final_metrics.json"
TOKENIZER_STEM = "tokenizer"
METRICS_FILE = "metrics.jsonl"
CHECKPOINTS_DIR = "checkpoints"
DIVERGED_DIR = "checkpoints_diverged"
EVALS_DIR = "evals"


def _tokenizer_name(src: str) -> str:
  suffix = storage.path(src).suffix
  return TOKENIZER_STEM + (".json" if suffix == ".json" else suffix or ".model")


def copy_tokenizer(src: str, directory: str) -> str:
  """Copies tokenizer file `src` into `directory` as tokenizer.model|.json,
  with the HF side files next to a tokenizer.json (they name its bos / eos /
  pad / unk: data/hf_tokenizer.py), so it loads there as it did at `src`;
  returns its name."""
  name = _tokenizer_name(src)
  storage.copy(src, storage.join(directory, name))
  if name.endswith(".json"):
    parent = str(storage.path(src).parent)
    for f in hf_tokenizer.side_files(src):
      storage.copy(storage.join(parent, f), storage.join(directory, f))
  return name


def run_tokenizer(config, must_exist: bool = True) -> Optional[str]:
  """config.data.tokenizer, or the embedded tokenizer's path once the pipeline
  has prepared it (or where it will be, unless `must_exist`); None without one."""
  tok = config.data.get("tokenizer") or None
  if not tok and "world" in config.data:
    from metalm_jax.data import prepare  # the data layer; only for the embedded world
    path = prepare.tokenizer_path(config.data, config.model.decoder.vocab_size)
    tok = path if (not must_exist or storage.exists(path)) else None
  return tok


def run_config_json(config, tokenizer: Optional[str]) -> Dict[str, Any]:
  """The run config as config.json holds it: the tokenizer (a file, local or
  remote) named by its file name inside the workdir."""
  cfg = json.loads(config.to_json_best_effort())
  if tokenizer:
    cfg.setdefault("data", {})["tokenizer"] = _tokenizer_name(tokenizer)
  return cfg


def write_run_config(config, workdir: str, tokenizer: Optional[str], write: bool = True) -> str:
  """Writes WORKDIR/config.json (run_config_json); `tokenizer` is copied into
  the workdir. `write=False` (processes other than 0) only returns the path."""
  out = storage.join(workdir, RUN_CONFIG_FILE)
  if write:
    if tokenizer:
      copy_tokenizer(tokenizer, workdir)
    storage.write_json(out, run_config_json(config, tokenizer))
  return out


def load_run_config(workdir: str) -> Dict[str, Any]:
  """WORKDIR/config.json as a dict (renamed fields under their new names,
  config_names.py); a tokenizer named inside the workdir comes back as a full
  path (local or gs://)."""
  path = storage.join(workdir, RUN_CONFIG_FILE)
  if not storage.exists(path):
    raise FileNotFoundError(f"workdir {workdir!r} has no {RUN_CONFIG_FILE} (the run config)")
  cfg, _ = config_names.migrate_tree(storage.read_json(path))
  data = cfg.get("data") or {}
  tok = data.get("tokenizer")
  if tok and "/" not in tok:
    data["tokenizer"] = storage.join(workdir, tok)
  return cfg


def write_results(workdir: str, results: Dict[str, Any]) -> str:
  return storage.write_json(storage.join(workdir, RESULTS_FILE), results)


def read_results(workdir: str) -> Optional[Dict[str, Any]]:
  path = storage.join(workdir, RESULTS_FILE)
  return storage.read_json(path) if storage.exists(path) else None
