"""The sweep's report: one row per run, one column per grid axis and per
metric, from each run's workdir:

  final_metrics.json         the trainer's final scalars (loss, eval_loss,
                             "<evaluator>/<metric>" of evaluators run at the
                             last step, ...)
  evals/step_<N>.json        the evaluators' results; the latest N is used,
                             as "<evaluator>/<metric>" (final_metrics wins
                             where both hold a metric)

Writes DIR/report.md, DIR/report.json and DIR/report.png (each metric against
the first axis, one line per combination of the other axes' values).
"""
from __future__ import annotations

import io
import logging
import math
import re
from typing import Any, Dict, List, Optional, Sequence, Tuple

from metalm_jax import optional, run_files, storage
from metalm_jax.sweep import grid as grid_lib
from metalm_jax.sweep import state as state_lib

REPORT_MD, REPORT_JSON, REPORT_PNG = "report.md", "report.json", "report.png"
EVALS_DIR = run_files.EVALS_DIR
# Shown when --metrics is not given (those some run has), then every
# "<evaluator>/<metric>" key.
DEFAULT_METRICS = ("loss", "accuracy", "eval_loss", "eval_accuracy")
_NOT_EVALUATORS = ("data/",)  # trainer counters, not results
_STEP_FILE = re.compile(r"step_(\d+)\.json")


def latest_evals(run_workdir: str) -> Tuple[Optional[int], Dict[str, float]]:
  """(N, {"name/metric": value}) of the workdir's latest evals/step_<N>.json."""
  d = storage.path(run_workdir) / EVALS_DIR
  if not d.exists():
    return None, {}
  steps = [int(m.group(1)) for p in d.iterdir() if (m := _STEP_FILE.fullmatch(p.name))]
  if not steps:
    return None, {}
  step = max(steps)
  res = storage.read_json(d / f"step_{step}.json")["results"]
  return step, {f"{name}/{k}": v for name, ms in res.items() for k, v in ms.items()}


def gather(sweep: Dict) -> List[Dict[str, Any]]:
  """One row per run: name, workdir, status, values (parsed, per axis),
  overrides (as typed), step, evals_step, metrics (every scalar found)."""
  rows = []
  for run in sweep["runs"]:
    final = state_lib.results(run["workdir"]) or {}
    evals_step, evals = latest_evals(run["workdir"])
    metrics = {k: v for k, v in {**evals, **final}.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool)}
    status = state_lib.DONE if state_lib.finished(run) else run.get("status", state_lib.PENDING)
    rows.append({"name": run["name"], "workdir": run["workdir"], "status": status,
                 "overrides": run["overrides"], "values": run["values"],
                 "step": final.get("step"), "evals_step": evals_step, "metrics": metrics})
  return rows


def pick_metrics(rows: Sequence[Dict], wanted: Optional[Sequence[str]]) -> List[str]:
  """`wanted` (each must be in some run's results once any run has results),
  or DEFAULT_METRICS present plus every evaluator metric."""
  have = sorted({k for r in rows for k in r["metrics"]})
  if wanted:
    unknown = [m for m in wanted if m not in have]
    if have and unknown:
      raise grid_lib.SweepError(f"--metrics {','.join(unknown)}: in no run's results; "
                                f"available: {','.join(have)}")
    return list(wanted)
  evaluators = [k for k in have if "/" in k and not k.startswith(_NOT_EVALUATORS)]
  return [m for m in DEFAULT_METRICS if m in have] + evaluators


def _cell(v: Any) -> str:
  if v is None:
    return "-"
  if isinstance(v, float):
    return f"{v:.4f}"
  return str(v)


def markdown(sweep: Dict, rows: Sequence[Dict], metrics: Sequence[str]) -> str:
  fields = [a["field"] for a in sweep["grid"]]
  fixed = " ".join(f"`{f}`" for f in sweep["fixed"]) or "none"
  head = ["run", *fields, "status", "step", *metrics]
  lines = [f"# Sweep {sweep['root']}", "",
           f"config `{sweep['config']}`; fixed overrides: {fixed}", "",
           "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for r in rows:
    cells = [r["name"], *(r["overrides"][f] for f in fields), r["status"], r["step"],
             *(r["metrics"].get(m) for m in metrics)]
    lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
  if any(r["evals_step"] is not None and r["evals_step"] != r["step"] for r in rows):
    lines += ["", "Evaluator metrics come from each run's latest evals/step_<N>.json "
              "(report.json: evals_step)."]
  return "\n".join(lines) + "\n"


def _numeric(values: Sequence[Any]) -> bool:
  return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def plot(sweep: Dict, rows: Sequence[Dict], metrics: Sequence[str]) -> Optional[bytes]:
  """PNG bytes: per metric, metric vs the first axis, one line per
  combination of the other axes; None without a grid, metrics or points."""
  if not sweep["grid"] or not metrics:
    return None
  first, others = sweep["grid"][0]["field"], [a["field"] for a in sweep["grid"][1:]]
  optional.require("matplotlib", "the sweep plot (report.png)").use("Agg")
  plt = optional.require("matplotlib.pyplot", "the sweep plot (report.png)")
  xs_all = [r["values"][first] for r in rows]
  numeric = _numeric(xs_all)
  order = list(dict.fromkeys(str(x) for x in xs_all))  # categorical x: grid order
  fig, axs = plt.subplots(1, len(metrics), figsize=(4.5 * len(metrics), 3.6), squeeze=False)
  drawn = False
  for ax, m in zip(axs[0], metrics):
    lines: Dict[str, List[Tuple[Any, float]]] = {}
    for r in rows:
      v = r["metrics"].get(m)
      if v is None or not math.isfinite(v):
        continue
      label = ", ".join(f"{f}={r['overrides'][f]}" for f in others) or m
      x = r["values"][first] if numeric else order.index(str(r["values"][first]))
      lines.setdefault(label, []).append((x, v))
    for label, pts in lines.items():
      ax.plot(*zip(*sorted(pts)), marker="o", label=label)
      drawn = True
    if numeric:
      ax.set_xticks(sorted(set(xs_all)))
    else:
      ax.set_xticks(range(len(order)), order)
    ax.set_xlabel(first)
    ax.set_ylabel(m)
    ax.grid(alpha=0.3)
    if lines and others:
      ax.legend(fontsize=7)
  if not drawn:
    plt.close(fig)
    return None
  fig.tight_layout()
  buf = io.BytesIO()
  fig.savefig(buf, format="png", dpi=100)
  plt.close(fig)
  return buf.getvalue()


def write(root: str, sweep: Dict, wanted: Optional[Sequence[str]] = None) -> Dict[str, str]:
  """Writes report.md / report.json (and report.png when there is something
  to draw; a plot that fails is a logged warning); returns their paths."""
  rows = gather(sweep)
  metrics = pick_metrics(rows, wanted)
  out = {"md": storage.write_text(storage.join(root, REPORT_MD), markdown(sweep, rows, metrics)),
         "json": storage.write_json(storage.join(root, REPORT_JSON), {
             "config": sweep["config"], "grid": sweep["grid"], "fixed": sweep["fixed"],
             "metrics": list(metrics), "rows": rows})}
  try:
    png = plot(sweep, rows, metrics)
  except Exception as e:  # noqa: BLE001  matplotlib missing or failing: the tables stand
    logging.warning("report.png not written (%s: %s)", type(e).__name__, e)
    print(f"[sweep] report.png not written: {e}", flush=True)
    png = None
  if png is not None:
    out["png"] = storage.write_bytes(storage.join(root, REPORT_PNG), png)
  else:  # no picture of an older report next to the new tables
    storage.remove(storage.join(root, REPORT_PNG))
  return out
