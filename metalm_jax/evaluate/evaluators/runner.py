"""The run loop: picks the evaluators of `config.evals` due at a step, runs
each through the registry (`common.EVALUATORS`) and writes their results
and predictions (process 0)."""
from __future__ import annotations

import json
import logging
from typing import Any, Dict, List, Optional, Sequence

import flax.linen as nn
import jax
from etils import epath

from metalm_jax import run_files
from metalm_jax.evaluate import placement as placement_lib
from metalm_jax.evaluate.evaluators import common
from metalm_jax.data import prepare


def markdown_table(results: Dict[str, Dict[str, float]]) -> str:
  lines = ["| evaluator | metric | value |", "|---|---|---|"]
  for name in sorted(results):
    for k in sorted(results[name]):
      v = results[name][k]
      lines.append(f"| {name} | {k} | {v:.4f} |" if isinstance(v, float) else
                   f"| {name} | {k} | {v} |")
  return "\n".join(lines) + "\n"


def write_results(workdir, step: int, results, predictions) -> epath.Path:
  """Writes step_<step>.json / .md and <name>_step_<step>.jsonl (each file in
  one write: a workdir may be an object store); returns the dir."""
  out = epath.Path(workdir) / run_files.EVALS_DIR
  out.mkdir(parents=True, exist_ok=True)
  (out / f"step_{step}.json").write_text(
      json.dumps({"step": step, "results": results}, indent=2, sort_keys=True))
  (out / f"step_{step}.md").write_text(f"## Evaluation at step {step}\n\n"
                                       + markdown_table(results))
  for name, rows in predictions.items():
    if rows:
      (out / f"{name}_step_{step}.jsonl").write_text(
          "".join(json.dumps(row, default=float) + "\n" for row in rows))
  return out


def read_predictions(workdir, name: str, step: int) -> Optional[List[Dict[str, Any]]]:
  """The rows `write_results` wrote for evaluator `name` at `step` (None when
  there is no such file)."""
  path = epath.Path(workdir) / run_files.EVALS_DIR / f"{name}_step_{step}.jsonl"
  if not path.exists():
    return None
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_evals(config, model, params, step: int, workdir, names: Optional[Sequence[str]] = None,
              placement: Optional[placement_lib.Placement] = None) -> Dict[str, float]:
  """Runs the evaluators of `config.evals` due at `step` (step divisible by
  their every_steps; all of them at step 0), or those in `names`; writes
  their results and predictions (process 0); returns {"<name>/<metric>": value}
  on every process. `placement`: the trainer's mesh, rules and param
  shardings (default: the config's mesh over all devices). Every process calls it."""
  evals = dict(config.get("evals") or {})
  if names is None:
    names = [n for n in sorted(evals) if step % max(int(evals[n].get("every_steps", 1)), 1) == 0]
  missing = [n for n in names if n not in evals]
  if missing:
    raise ValueError(f"evals {missing} are not in config.evals ({sorted(evals)})")
  if not names:
    return {}
  placement = placement or placement_lib.Placement.from_config(config, model)
  env = common.Env(config, model, placement.put_params(nn.meta.unbox(params)),
                   prepare.load_tokenizer(config), step, placement)
  results, predictions = {}, {}
  for name in names:
    ev = common.resolve(evals[name])
    logging.info("evaluator %s (%s) at step %d", name, ev.type, step)
    res, rows = common.EVALUATORS.get(ev.type)(env, ev)
    results[name] = {k: float(v) for k, v in res.items()}
    predictions[name] = rows
  if jax.process_index() == 0:
    write_results(workdir, step, results, predictions)
  return {f"{n}/{k}": v for n, r in results.items() for k, v in r.items()}
