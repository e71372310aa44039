"""The paper's claims in miniature, each against its baseline (SPEC.md section 6,
issue 13), on the embedded world, on CPU, in one command:

    python benchmarks/claims.py --workdir=/tmp/claims [--parallel=2] [--seeds=2]
        [--lang_steps=500] [--vl_steps=1200] [--finetune_steps=300]

Every stage is a sweep (metalm_jax.sweep: WORKDIR/<stage>/sweep.json, one
workdir per run, report.md) of a config of configs/experiments/claims.py;
the decisive finetunings are a grid over `seed`. Start the same command again
to resume: finished runs are skipped, interrupted ones resume from their
checkpoints. Two chains of stages (language-only, vision-language) run side
by side with --parallel=2; each run's console goes to WORKDIR/<stage>/<run>.log.

  language-only   lang_metalm, lang_gpt (pretraining on the same text, same
                  tokens) -> nli_metalm (decoder frozen), nli_gpt (in full),
                  mt_metalm, mt_gpt (NLI cluster held out)
  vision-language vl_pretrain -> vl_zeroshot, vl_icl_bare (in-context VQA with
                  the bare question as prompt), vl_zeroshot_blind (blank images),
                  vqa_ft, vqa_ft_blind (finetuned with images blanked)

Writes WORKDIR/claims.json, claims.md (each claim: MetaLM, baseline, the
paper's direction, holds yes/no; values are means over seeds, each seed
listed) and icl_vs_k.png. Seeds fixed.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from typing import Dict, List, Optional, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

CONFIG = "configs/experiments/claims.py"
ICL_SHOTS = (0, 1, 2, 4)  # configs/experiments/claims.py ICL_SHOTS


@dataclasses.dataclass(frozen=True)
class Stage:
  name: str
  stage: str                 # the config's stage
  init: str = ""             # the stage whose (single) run it starts from
  blank: bool = False
  seeds: bool = False        # a grid over seed (the decisive comparisons)
  steps: str = ""            # which --*_steps flag sets its steps ("" = eval-only)


LANG_CHAIN = (
    Stage("lang_metalm", "lang_metalm", steps="lang"),
    Stage("lang_gpt", "lang_gpt", steps="lang"),
    Stage("nli_metalm", "nli_metalm", init="lang_metalm", seeds=True, steps="finetune"),
    Stage("nli_gpt", "nli_gpt", init="lang_gpt", seeds=True, steps="finetune"),
    Stage("mt_metalm", "mt_metalm", init="lang_metalm", steps="finetune"),
    Stage("mt_gpt", "mt_gpt", init="lang_gpt", steps="finetune"),
)
VL_CHAIN = (
    Stage("vl_pretrain", "vl_pretrain", steps="vl"),
    Stage("vl_zeroshot", "vl_zeroshot", init="vl_pretrain"),
    Stage("vl_icl_bare", "vl_icl_bare", init="vl_pretrain"),
    Stage("vl_zeroshot_blind", "vl_zeroshot", init="vl_pretrain", blank=True),
    Stage("vqa_ft", "vqa_ft", init="vl_pretrain", seeds=True, steps="finetune"),
    Stage("vqa_ft_blind", "vqa_ft", init="vl_pretrain", blank=True, seeds=True,
          steps="finetune"),
)


@dataclasses.dataclass(frozen=True)
class Ref:
  stage: str
  metric: str   # "<evaluator>/<metric>" of the stage's runs


@dataclasses.dataclass(frozen=True)
class Claim:
  key: str
  paper: str       # the paper's row
  what: str
  metalm: Ref
  baseline: Ref
  baseline_name: str
  direction: str = "MetaLM > baseline"


def _icl(stage: str, when: str, lo: int, hi: int, key: str = "", evaluator: str = "icl"
         ) -> Claim:
  return Claim(f"icl_{key or when}_k{hi}_vs_k{lo}", "in-context learning improves with shots",
               f"in-context VQA accuracy, {when}: k={hi} vs k={lo}",
               Ref(stage, f"{evaluator}/k{hi}/accuracy"), Ref(stage, f"{evaluator}/k{lo}/accuracy"),
               f"the same model, k={lo}", f"rises from k={lo} to k={hi}")


_BARE = dict(key="pretrained_bare", evaluator="icl_bare")


CLAIMS = (
    Claim("nli_generate", "finetuning, decoder frozen (MNLI 91.1 vs GPT 87.7)",
          "world NLI accuracy, label generated: language-only MetaLM (decoder frozen, encoder "
          "+ connector trained) vs the same-size GPT finetuned in full",
          Ref("nli_metalm", "nli/accuracy_generate"), Ref("nli_gpt", "nli/accuracy_generate"),
          "GPT, finetuned in full"),
    Claim("nli_rank", "finetuning, decoder frozen (MNLI 91.1 vs GPT 87.7)",
          "world NLI accuracy, label ranked by likelihood (same runs)",
          Ref("nli_metalm", "nli/accuracy_rank"), Ref("nli_gpt", "nli/accuracy_rank"),
          "GPT, finetuned in full"),
    Claim("heldout_nli", "multitask tuning, held-out cluster (79.1 vs 65.0)",
          "held-out NLI accuracy (ranked) after tuning on the instruction cluster",
          Ref("mt_metalm", "heldout_nli/accuracy_rank"), Ref("mt_gpt", "heldout_nli/accuracy_rank"),
          "GPT, tuned the same way"),
    _icl("vl_zeroshot", "pretrained", 0, 1),
    _icl("vl_zeroshot", "pretrained", 1, 4),
    _icl("vl_icl_bare", "pretrained, bare question as prompt", 0, 1, **_BARE),
    _icl("vl_icl_bare", "pretrained, bare question as prompt", 1, 4, **_BARE),
    _icl("vqa_ft", "after VQA finetuning", 0, 1),
    _icl("vqa_ft", "after VQA finetuning", 1, 4),
    Claim("caption_vs_blind", "zero-shot captioning (COCO CIDEr 82.2)",
          "zero-shot caption CIDEr ('Summarize this image:')",
          Ref("vl_zeroshot", "caption/CIDEr"), Ref("vl_zeroshot_blind", "caption/CIDEr"),
          "the same model, blank image"),
    Claim("caption_vs_fixed", "zero-shot captioning (COCO CIDEr 82.2)",
          "zero-shot caption CIDEr ('Summarize this image:')",
          Ref("vl_zeroshot", "caption/CIDEr"), Ref("vl_zeroshot", "caption/fixed_caption_CIDEr"),
          "the most frequent training caption"),
    Claim("vqa_zeroshot_vs_blind", "zero-shot VQA (VQAv2 41.1 vs Frozen 29.5)",
          "zero-shot VQA accuracy", Ref("vl_zeroshot", "vqa/accuracy"),
          Ref("vl_zeroshot_blind", "vqa/accuracy"), "the same model, blank image"),
    Claim("vqa_zeroshot_vs_majority", "zero-shot VQA (VQAv2 41.1 vs Frozen 29.5)",
          "zero-shot VQA accuracy", Ref("vl_zeroshot", "vqa/accuracy"),
          Ref("vl_zeroshot", "vqa/majority_answer_accuracy"), "the majority answer"),
    Claim("vqa_ft_vs_blind", "vision-language finetuning uses the image",
          "finetuned VQA accuracy", Ref("vqa_ft", "vqa/accuracy"),
          Ref("vqa_ft_blind", "vqa/accuracy"), "the same finetuning, images blanked"),
)


# ---- the table (pure: results in, rows out) -------------------------------------
def _values(results: Dict[str, List[Dict[str, float]]], ref: Ref) -> List[float]:
  return [float(r[ref.metric]) for r in results.get(ref.stage, []) if ref.metric in r]


def _mean(xs: Sequence[float]) -> Optional[float]:
  return statistics.fmean(xs) if xs else None


def claim_rows(results: Dict[str, List[Dict[str, float]]],
               claims: Sequence[Claim] = CLAIMS) -> List[Dict]:
  """One row per claim from {stage: [metrics of each of its runs]}: MetaLM
  and baseline means (and per-run values), holds = mean MetaLM > mean
  baseline; a claim missing a value is `holds: None` (not measured)."""
  rows = []
  for c in claims:
    m, b = _values(results, c.metalm), _values(results, c.baseline)
    mm, bm = _mean(m), _mean(b)
    holds = None if mm is None or bm is None else bool(mm > bm)
    rows.append(dict(key=c.key, paper=c.paper, claim=c.what, direction=c.direction,
                     metalm=mm, metalm_runs=m, baseline_name=c.baseline_name, baseline=bm,
                     baseline_runs=b, holds=holds))
  return rows


def _fmt(mean: Optional[float], runs: Sequence[float]) -> str:
  if mean is None:
    return "not measured"
  return f"{mean:.3f}" + (f" ({' / '.join(f'{x:.3f}' for x in runs)})" if len(runs) > 1 else "")


def markdown(rows: Sequence[Dict]) -> str:
  out = ["| paper | claim | MetaLM | baseline | paper's direction | holds |",
         "|---|---|---|---|---|---|"]
  for r in rows:
    holds = {True: "yes", False: "**no**", None: "not measured"}[r["holds"]]
    out.append(f"| {r['paper']} | {r['claim']} | {_fmt(r['metalm'], r['metalm_runs'])} | "
               f"{r['baseline_name']}: {_fmt(r['baseline'], r['baseline_runs'])} | "
               f"{r['direction']} | {holds} |")
  return "\n".join(out) + "\n"


def icl_curves(results: Dict[str, List[Dict[str, float]]]) -> Dict[str, List[Optional[float]]]:
  """Mean in-context VQA accuracy per k, pretrained and after finetuning."""
  return {label: [_mean(_values(results, Ref(stage, f"{ev}/k{k}/accuracy"))) for k in ICL_SHOTS]
          for label, stage, ev in (("pretrained", "vl_zeroshot", "icl"),
                                   ("pretrained, bare question", "vl_icl_bare", "icl_bare"),
                                   ("after VQA finetuning", "vqa_ft", "icl"))}


def icl_plot(results, path: str) -> bool:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  curves = icl_curves(results)
  fig, ax = plt.subplots(figsize=(5, 3.6))
  drawn = False
  for label, ys in curves.items():
    pts = [(k, y) for k, y in zip(ICL_SHOTS, ys) if y is not None]
    if pts:
      ax.plot(*zip(*pts), marker="o", label=label)
      drawn = True
  majority = _mean(_values(results, Ref("vl_zeroshot", "vqa/majority_answer_accuracy")))
  if majority is not None:
    ax.axhline(majority, ls="--", c="gray", label="majority answer")
  ax.set_xticks(ICL_SHOTS)
  ax.set_xlabel("demonstrations k")
  ax.set_ylabel("VQA accuracy (world, validation)")
  ax.set_title("in-context VQA, tiny MetaLM")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  if drawn:
    fig.savefig(path, dpi=100)
  plt.close(fig)
  return drawn


# ---- running the stages as sweeps ------------------------------------------------
def _config(st: Stage, workdir: str, steps: Dict[str, int]) -> str:
  arg = [f"stage={st.stage}"]
  if st.init:
    arg.append(f"init={os.path.join(workdir, st.init, 'base')}")
  if st.steps:
    arg.append(f"steps={steps[st.steps]}")
  if st.blank:
    arg.append("blank=1")
  return f"{CONFIG}:{','.join(arg)}"


def run_logged(cmd: List[str]) -> int:
  """The sweep's run function, each run's console in <stage>/<run>.log."""
  wd = next(a for a in cmd if a.startswith("--workdir="))[len("--workdir="):]
  with open(wd.rstrip("/") + ".log", "w") as log:
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT).wait()


def run_stage(st: Stage, workdir: str, steps: Dict[str, int], seeds: int) -> Dict:
  from metalm_jax.sweep import report as report_lib
  from metalm_jax.sweep import runner as runner_lib
  from metalm_jax.sweep import state as state_lib
  root = os.path.join(workdir, st.name)
  grid = f"seed={','.join(str(s) for s in range(seeds))}" if st.seeds and seeds > 1 else ""
  sweep = state_lib.plan(root, _config(st, workdir, steps), grid, [])
  state_lib.save(root, sweep)
  t0 = time.time()
  rc = runner_lib.run_all(root, sweep, run_logged)
  report_lib.write(root, sweep)
  print(f"[claims] {st.name}: exit {rc}, {time.time() - t0:.0f} s", flush=True)
  return sweep


def run_chain(chain: Sequence[Stage], workdir, steps, seeds, timing: Dict[str, float]):
  for st in chain:
    t0 = time.time()
    run_stage(st, workdir, steps, seeds)
    timing[st.name] = round(time.time() - t0, 1)


def gather(workdir: str) -> Dict[str, List[Dict[str, float]]]:
  """{stage: [metrics of each finished run]} from the stages' sweep.json."""
  from metalm_jax.sweep import report as report_lib
  from metalm_jax.sweep import state as state_lib
  out = {}
  for st in LANG_CHAIN + VL_CHAIN:
    sweep = state_lib.load(os.path.join(workdir, st.name))
    if sweep is None:
      continue
    out[st.name] = [r["metrics"] for r in report_lib.gather(sweep)
                    if r["status"] == state_lib.DONE]
  return out


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--workdir", required=True)
  p.add_argument("--lang_steps", type=int, default=500)
  p.add_argument("--vl_steps", type=int, default=1200)
  p.add_argument("--finetune_steps", type=int, default=300)
  p.add_argument("--seeds", type=int, default=2, help="seeds of the decisive finetunings")
  p.add_argument("--parallel", type=int, choices=(1, 2), default=2,
                 help="2: the language-only and vision-language chains side by side")
  args = p.parse_args(argv)
  workdir = os.path.abspath(args.workdir)
  if "," in workdir or ":" in workdir:
    raise SystemExit(f"--workdir={workdir}: no ',' or ':' (it goes into config args)")
  os.makedirs(workdir, exist_ok=True)
  # Runs of the same shapes (seeds, blanked images, the two zero-shot
  # evaluations) share compiles through JAX's persistent cache.
  os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(workdir, "xla_cache"))
  steps = dict(lang=args.lang_steps, vl=args.vl_steps, finetune=args.finetune_steps)
  timing: Dict[str, float] = {}
  t0 = time.time()
  if args.parallel == 2:
    lang = threading.Thread(target=run_chain, args=(LANG_CHAIN, workdir, steps, args.seeds,
                                                    timing))
    lang.start()
    run_chain(VL_CHAIN, workdir, steps, args.seeds, timing)
    lang.join()
  else:
    run_chain(LANG_CHAIN + VL_CHAIN, workdir, steps, args.seeds, timing)
  total = round(time.time() - t0, 1)
  results = gather(workdir)
  rows = claim_rows(results)
  md = markdown(rows)
  with open(os.path.join(workdir, "claims.md"), "w") as f:
    f.write(md)
  with open(os.path.join(workdir, "claims.json"), "w") as f:
    json.dump({"args": vars(args), "seconds": total, "stage_seconds": timing, "claims": rows,
               "icl": {"shots": list(ICL_SHOTS), **icl_curves(results)}}, f, indent=2)
  icl_plot(results, os.path.join(workdir, "icl_vs_k.png"))
  print(md + f"\n[claims] {total:.0f} s; stages: {timing}", flush=True)
  return rows


if __name__ == "__main__":
  main()
