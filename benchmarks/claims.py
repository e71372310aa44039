"""The paper's claims in miniature, each row MetaLM - baseline with a 95%
paired bootstrap interval (protocol: configs/experiments/claims.py),
on the embedded world, on CPU, in one command:

    python benchmarks/claims.py --workdir=/tmp/claims [--quick]
        [--seeds=3] [--lang_steps=600] [--vl_steps=1200] [--finetune_steps=300]

Every stage is a sweep (metalm_jax.sweep: WORKDIR/<stage>/sweep.json, one
workdir per run, report.md) of a config of configs/experiments/claims.py;
the finetunings are a grid over `seed`. Start the same command again to
resume: finished runs are skipped, interrupted ones resume from their
checkpoints. The language-only and the vision-language chains run side by
side (--parallel=2); each run's console goes to WORKDIR/<stage>/<run>.log.

  language-only    lang_metalm, lang_gpt (same text, same tokens; the text
                   binding episodes evaluated in context at the end) ->
                   nli_metalm (decoder frozen), nli_gpt (in full),
                   mt_metalm, mt_gpt (NLI cluster held out)
  vision-language  vl_pretrain (no VQA, no caption prompt) -> vl_zeroshot
                   (captions, VQA, each also blind; image binding episodes
                   and VQA in context) -> vqa_ft (decoder frozen),
                   vqa_ft_blind (the same with images blanked)

--quick: one seed, QUICK_EXAMPLES evaluation examples, short runs (a smoke
run, not evidence). --world=test and --stages=a,b run a part on the unit-test
world (tests/test_claims.py).

Writes WORKDIR/claims.json (one record per row: name, paper, metalm,
baseline, diff, ci95, n, seeds, holds, flags, and the protocol's fields; the
run's provenance, metalm_jax/provenance.py), claims.md and icl_vs_k.png
(accuracy per k with 95% intervals). Refresh the table of docs/claims.md
from a claims.json with --docs=docs/claims.md.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import subprocess
import sys
import threading
import time
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

from configs.experiments import claims as protocol  # noqa: E402
from metalm_jax import provenance  # noqa: E402
from metalm_jax.evaluate import stats  # noqa: E402

CONFIG = "configs/experiments/claims.py"


@dataclasses.dataclass(frozen=True)
class Stage:
  name: str
  stage: str                 # the config's stage
  init: str = ""             # the stage whose (single) run it starts from
  blank: bool = False
  seeds: bool = False        # a grid over seed (the finetunings)
  steps: str = ""            # which --*_steps flag sets its steps ("" = eval-only)


LANG_CHAIN = (
    Stage("lang_metalm", "lang_metalm", steps="lang"),
    Stage("lang_gpt", "lang_gpt", steps="lang"),
    Stage("nli_metalm", "nli_metalm", init="lang_metalm", seeds=True, steps="finetune"),
    Stage("nli_gpt", "nli_gpt", init="lang_gpt", seeds=True, steps="finetune"),
    Stage("mt_metalm", "mt_metalm", init="lang_metalm", seeds=True, steps="finetune"),
    Stage("mt_gpt", "mt_gpt", init="lang_gpt", seeds=True, steps="finetune"),
)
VL_CHAIN = (
    Stage("vl_pretrain", "vl_pretrain", steps="vl"),
    Stage("vl_zeroshot", "vl_zeroshot", init="vl_pretrain"),
    Stage("vqa_ft", "vqa_ft", init="vl_pretrain", seeds=True, steps="finetune"),
    Stage("vqa_ft_blind", "vqa_ft", init="vl_pretrain", blank=True, seeds=True,
          steps="finetune"),
)
# Eval-only experiments that explain rows (protocol.EXPLANATIONS), run last.
EXPLAIN = (Stage("explain_lang", "explain_lang", init="lang_metalm"),
           Stage("explain_vl", "explain_vl", init="vl_pretrain"))
LANG_CHAIN += EXPLAIN[:1]
VL_CHAIN += EXPLAIN[1:]
STAGES = {s.name: s for s in LANG_CHAIN + VL_CHAIN}
QUICK = dict(seeds=1, lang_steps=200, vl_steps=400, finetune_steps=100)


# ---- per-example values of a run ------------------------------------------------------
def eval_rows(run_workdir: str, evaluator: str, step: Optional[int]) -> List[Dict[str, Any]]:
  """The predictions rows evaluator `evaluator` wrote at `step` in a run
  ([] when there are none: the row is then not measured)."""
  from metalm_jax.evaluate.evaluators import runner
  return (runner.read_predictions(run_workdir, evaluator, step) or []) if step is not None else []


def gather(workdir: str) -> Dict[str, List[Dict[str, Any]]]:
  """{stage: [{"seed", "workdir", "evals_step"} of each finished run, by seed]}."""
  from metalm_jax.sweep import report as report_lib
  from metalm_jax.sweep import state as state_lib
  out = {}
  for st in STAGES.values():
    sweep = state_lib.load(os.path.join(workdir, st.name))
    if sweep is None:
      continue
    runs = [dict(seed=int(r["values"].get("seed", 0)), workdir=r["workdir"],
                 evals_step=r["evals_step"])
            for r in report_lib.gather(sweep) if r["status"] == state_lib.DONE]
    out[st.name] = sorted(runs, key=lambda r: r["seed"])
  return out


def _pairs(runs, row) -> List[tuple]:
  """[(metalm rows, baseline rows)] aligned by example, one pair per seed:
  the same run when both refer to one stage, seed with seed across stages,
  one baseline run against each MetaLM seed when the baseline has one."""
  m, b = row["metalm"], row["baseline"]
  mr, br = runs.get(m["stage"], []), runs.get(b["stage"], [])
  if not mr or not br:
    return []
  if len(br) == 1:
    br = br * len(mr)
  if len(br) != len(mr):
    raise ValueError(f"row {row['name']}: {len(mr)} runs of {m['stage']} vs {len(br)} of "
                     f"{b['stage']}")
  out = []
  for x, y in zip(mr, br):
    a = eval_rows(x["workdir"], m["evaluator"], x["evals_step"])
    c = eval_rows(y["workdir"], b["evaluator"], y["evals_step"])
    if not a or not c:
      return []
    out.append(stats.align(a, c))
  return out


def claim_record(row: Dict[str, Any], runs, num_samples: int = 2000) -> Dict[str, Any]:
  """One claims.json record: the protocol's fields, MetaLM, baseline, diff,
  ci95, n, seeds, holds, flags. Not measured (a stage missing): values None,
  holds None. Holds only when ci95 lies above 0 and MetaLM's most frequent
  prediction covers at most stats.SINGLE_CLASS_SHARE of the examples."""
  rec = {k: row[k] for k in ("name", "paper", "what", "model", "trains", "baseline_what",
                             "eval")}
  rec.update(metalm=None, baseline=None, diff=None, ci95=None, n=0, seeds=0, holds=None,
             flags=[])
  pairs = _pairs(runs, row)
  if not pairs:
    rec["flags"] = ["not measured"]
    return rec
  ma = [stats.column(a, row["metalm"]["column"]) for a, _ in pairs]
  ba = [stats.column(b, row["baseline"]["column"]) for _, b in pairs]
  preds = ([str(stats.lookup(r, row["prediction"])) for a, _ in pairs for r in a]
           if row["prediction"] else None)
  res = stats.verdict(ma, ba, preds, num_samples=num_samples, seed=0)
  rec.update({k: res[k] for k in ("metalm", "baseline", "diff", "ci95", "n", "seeds", "flags",
                                  "holds", "majority_prediction_share")})
  return rec


def icl_curves(runs) -> Dict[str, Dict[str, List]]:
  """label -> {"mean": [per k], "ci95": [[low, high] per k]}: accuracy in
  context per k (bootstrap over examples pooled over seeds), None where missing."""
  out = {}
  for label, (stage, ev) in protocol.ICL_CURVES.items():
    means, cis = [], []
    for k in protocol.ICL_SHOTS:
      vals = [stats.column(eval_rows(x["workdir"], ev, x["evals_step"]), f"k{k}.score")
              for x in runs.get(stage, [])]
      vals = [v for v in vals if len(v)]
      if not vals:
        means.append(None)
        cis.append(None)
        continue
      res = stats.paired_bootstrap(vals, [np.zeros_like(v) for v in vals], seed=0)
      means.append(res["metalm"])
      cis.append(list(res["ci95"]))
    out[label] = {"mean": means, "ci95": cis}
  return out


# ---- tables and the figure ---------------------------------------------------------------
def _num(x) -> str:
  return "n/a" if x is None else f"{x:.3f}"


def markdown(records: Sequence[Dict[str, Any]]) -> str:
  out = ["| row | paper | MetaLM | baseline | diff [95% CI] | n x seeds | holds |",
         "|---|---|---|---|---|---|---|"]
  for r in records:
    ci = "n/a" if r["ci95"] is None else f"[{r['ci95'][0]:+.3f}, {r['ci95'][1]:+.3f}]"
    diff = "n/a" if r["diff"] is None else f"{r['diff']:+.3f} {ci}"
    holds = {True: "yes", False: "**no**", None: "not measured"}[r["holds"]]
    if r["flags"]:
      holds += " (" + "; ".join(r["flags"]) + ")"
    out.append(f"| `{r['name']}`: {r['what']} | {r['paper']} | {_num(r['metalm'])} | "
               f"{r['baseline_what']}: {_num(r['baseline'])} | {diff} | "
               f"{r['n']} x {r['seeds']} | {holds} |")
  return "\n".join(out) + "\n"


def icl_plot(curves, path: str) -> bool:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(6, 4))
  drawn = False
  for i, (label, c) in enumerate(curves.items()):
    pts = [(k + 0.04 * (i - 2), m, ci) for k, m, ci in zip(protocol.ICL_SHOTS, c["mean"],
                                                           c["ci95"]) if m is not None]
    if not pts:
      continue
    ks, ms, cis = zip(*pts)
    err = np.array([[m - lo for m, (lo, _) in zip(ms, cis)], [hi - m for m, (_, hi) in
                                                              zip(ms, cis)]])
    ax.errorbar(ks, ms, yerr=err, marker="o", capsize=3, label=label)
    drawn = True
  ax.set_xticks(protocol.ICL_SHOTS)
  ax.set_xlabel("demonstrations k")
  ax.set_ylabel("accuracy (world validation), 95% CI")
  ax.set_title("in context, tiny MetaLM")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7)
  fig.tight_layout()
  if drawn:
    fig.savefig(path, dpi=100)
  plt.close(fig)
  return drawn


DOCS_BEGIN = "<!-- claims table: benchmarks/claims.py --docs (from claims.json) -->"
DOCS_END = "<!-- end of claims table -->"


AV_BEGIN = "<!-- av table: benchmarks/claims.py --docs (from av_tasks.md) -->"
AV_END = "<!-- end of av table -->"


def _replace_block(text: str, begin: str, end: str, body: str, where: str) -> str:
  pat = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
  if not pat.search(text):
    raise ValueError(f"{where}: no {begin!r} ... {end!r} block")
  return pat.sub(lambda m: f"{begin}\n{body}{end}", text)


def av_table(av_md: str) -> str:
  """The table of benchmarks/av_tasks.py's av_tasks.md (its `|` lines)."""
  with open(av_md) as f:
    return "".join(line for line in f if line.startswith("|"))


def write_docs_table(claims_json: str, docs_path: str, av_md: str = "") -> None:
  """Replaces the table between DOCS_BEGIN and DOCS_END in `docs_path` with
  the one of `claims_json` (the docs read their figures from the result file)."""
  with open(claims_json) as f:
    result = json.load(f)
  records = result["claims"]
  with open(docs_path) as f:
    text = f.read()
  held = sum(r["holds"] is True for r in records)
  body = (f"{held} of {len(records)} rows hold.\n\n{markdown(records)}\n"
          f"Experiments that explain rows:\n\n{markdown(result.get('explanations', []))}")
  text = _replace_block(text, DOCS_BEGIN, DOCS_END, body, docs_path)
  if av_md:
    text = _replace_block(text, AV_BEGIN, AV_END, av_table(av_md), docs_path)
  with open(docs_path, "w") as f:
    f.write(text)


# ---- running the stages as sweeps ------------------------------------------------
def _config(st: Stage, workdir: str, steps: Dict[str, int], examples: int) -> str:
  arg = [f"stage={st.stage}"]
  if st.init:
    arg.append(f"init={os.path.join(workdir, st.init, 'base')}")
  if st.steps:
    arg.append(f"steps={steps[st.steps]}")
  if st.blank:
    arg.append("blank=1")
  if examples:
    arg.append(f"examples={examples}")
  return f"{CONFIG}:{','.join(arg)}"


def run_logged(cmd: List[str]) -> int:
  """The sweep's run function, each run's console in <stage>/<run>.log."""
  wd = next(a for a in cmd if a.startswith("--workdir="))[len("--workdir="):]
  with open(wd.rstrip("/") + ".log", "w") as log:
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT).wait()


def run_stage(st: Stage, workdir: str, steps, seeds: int, examples: int, fixed) -> int:
  from metalm_jax.sweep import report as report_lib
  from metalm_jax.sweep import runner as runner_lib
  from metalm_jax.sweep import state as state_lib
  root = os.path.join(workdir, st.name)
  grid = f"seed={','.join(str(s) for s in range(seeds))}" if st.seeds else ""
  sweep = state_lib.plan(root, _config(st, workdir, steps, examples), grid, fixed)
  state_lib.save(root, sweep)
  t0 = time.time()
  rc = runner_lib.run_all(root, sweep, run_logged)
  report_lib.write(root, sweep)
  print(f"[claims] {st.name}: exit {rc}, {time.time() - t0:.0f} s", flush=True)
  return rc


def run_chain(chain: Sequence[Stage], workdir, steps, seeds, examples, fixed,
              timing: Dict[str, Any]):
  for st in chain:
    t0 = time.time()
    rc = run_stage(st, workdir, steps, seeds, examples, fixed)
    timing[st.name] = round(time.time() - t0, 1)
    if rc:
      timing.setdefault("failed", []).append(st.name)
      print(f"[claims] {st.name} failed (exit {rc}): the rest of its chain is skipped; "
            f"see {os.path.join(workdir, st.name)}/*.log", flush=True)
      return


def report(workdir: str, meta: Dict[str, Any],
           begun: Optional[provenance.Start] = None) -> List[Dict[str, Any]]:
  runs = gather(workdir)
  records = [claim_record(r, runs) for r in protocol.ROWS]
  explanations = [claim_record(r, runs) for r in protocol.EXPLANATIONS]
  curves = icl_curves(runs)
  md = markdown(records)
  with open(os.path.join(workdir, "claims.md"), "w") as f:
    f.write(md + "\nExperiments that explain rows:\n\n" + markdown(explanations))
  # The runs are child processes: this one never opens a device.
  provenance.write_json(os.path.join(workdir, "claims.json"),
                        {**meta, "claims": records, "explanations": explanations,
                         "icl": {"shots": list(protocol.ICL_SHOTS), **curves}},
                        begun, devices="subprocess")
  icl_plot(curves, os.path.join(workdir, "icl_vs_k.png"))
  print(md, flush=True)
  return records


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--workdir")
  p.add_argument("--quick", action="store_true", help="smoke run: " + json.dumps(QUICK))
  p.add_argument("--lang_steps", type=int, default=600)
  p.add_argument("--vl_steps", type=int, default=1200)
  p.add_argument("--finetune_steps", type=int, default=300)
  p.add_argument("--seeds", type=int, default=3, help="seeds of the finetunings")
  p.add_argument("--examples", type=int, default=0,
                 help=f"evaluation examples (0: {protocol.EXAMPLES}, --quick "
                      f"{protocol.QUICK_EXAMPLES})")
  p.add_argument("--parallel", type=int, choices=(1, 2), default=2,
                 help="2: the language-only and vision-language chains side by side")
  p.add_argument("--world", default="", help="embedded world config (default: the presets')")
  p.add_argument("--stages", default="", help="comma-separated subset of " + ",".join(STAGES))
  p.add_argument("--docs", default="", help="write the table of WORKDIR/claims.json (or "
                 "--claims_json) into this docs page and exit")
  p.add_argument("--claims_json", default="")
  p.add_argument("--av_md", default="", help="with --docs: also the audio / video table of "
                 "this av_tasks.md (benchmarks/av_tasks.py)")
  args = p.parse_args(argv)
  begun = provenance.start()
  if args.docs:
    write_docs_table(args.claims_json or os.path.join(args.workdir, "claims.json"), args.docs,
                     args.av_md)
    return []
  if not args.workdir:
    p.error("--workdir is required")
  if args.quick:
    for k, v in QUICK.items():
      if getattr(args, k) == p.get_default(k):
        setattr(args, k, v)
    args.examples = args.examples or protocol.QUICK_EXAMPLES
  workdir = os.path.abspath(args.workdir)
  if "," in workdir or ":" in workdir:
    raise SystemExit(f"--workdir={workdir}: no ',' or ':' (it goes into config args)")
  chosen = [s for s in args.stages.split(",") if s]
  unknown = sorted(set(chosen) - set(STAGES))
  if unknown:
    raise SystemExit(f"--stages: unknown {unknown}; known: {sorted(STAGES)}")
  os.makedirs(workdir, exist_ok=True)
  # Runs of the same shapes (seeds, blanked images) share compiles.
  os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(workdir, "xla_cache"))
  steps = dict(lang=args.lang_steps, vl=args.vl_steps, finetune=args.finetune_steps)
  fixed = [f"data.world={args.world}"] if args.world else []
  chains = [tuple(s for s in c if not chosen or s.name in chosen) for c in (LANG_CHAIN, VL_CHAIN)]
  timing: Dict[str, Any] = {}
  t0 = time.time()
  common = (workdir, steps, args.seeds, args.examples, fixed, timing)
  if args.parallel == 2:
    lang = threading.Thread(target=run_chain, args=(chains[0],) + common)
    lang.start()
    run_chain(chains[1], *common)
    lang.join()
  else:
    run_chain(chains[0] + chains[1], *common)
  total = round(time.time() - t0, 1)
  failed = timing.pop("failed", [])
  records = report(workdir, {"args": vars(args), "seconds": total, "stage_seconds": timing},
                   begun)
  held = sum(r["holds"] is True for r in records)
  print(f"[claims] {held} of {len(records)} rows hold; {total:.0f} s; stages: {timing}",
        flush=True)
  if failed:
    raise SystemExit(f"[claims] stages failed: {failed} (the table holds what finished)")
  return records


if __name__ == "__main__":
  main()
