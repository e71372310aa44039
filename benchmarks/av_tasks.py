"""Audio captioning and video QA on the embedded world against trivial
baselines, on CPU (the audio / video half of the paper-claims miniature,
benchmarks/claims.py), each row MetaLM - baseline with a 95% paired
bootstrap interval over the evaluation examples, as claims.py reports:

  1. tiny four-modality semi-causal pretraining
     (configs/pretrain_av.py:size=tiny: text, images, sound clips, videos);
  2. audio-caption finetuning (configs/finetune_caption.py:modality=audio):
     CIDEr of the generated captions ("caption:") vs the most frequent
     training caption given for every clip, and vs the same model given a
     silent clip (a second evaluator `blind` of the same run: media blanked);
  3. video-QA finetuning (configs/finetune_vqa.py:modality=video): VQA
     accuracy vs the majority answer and vs the same model given a blank video;
  4. (--audio_qa_steps > 0) audio-QA finetuning, the same two rows.

    python benchmarks/av_tasks.py --workdir=/tmp/av_tasks [--pretrained=/tmp/av_tasks/pretrain]
        [--pretrain_steps=600] [--finetune_steps=300] [--audio_qa_steps=150]
        [--finetune_lr=0] [--examples=300] [--data_dir=...]

Each finetuning is evaluated once, at its last step, on the first
--examples validation clips (default 300: the tiny world's whole validation
split). The rows read the evaluators' per-example columns
(<run>/evals/<evaluator>_step_<step>.jsonl, metalm_jax/evaluate/stats.py):
MetaLM's `CIDEr` / `accuracy` against the same rows' `fixed_CIDEr` /
`majority_accuracy`, or against the `blind` evaluator's rows paired by
example `index`. Per row: metalm, baseline, diff (their mean difference),
ci95 (stats.paired_bootstrap, 2000 resamples, seed 0), n, holds, flags. A row
holds only when ci95 lies above 0 and MetaLM's most frequent prediction
covers at most stats.SINGLE_CLASS_SHARE (90%) of the examples (else a
"single class" flag). Per-image CIDEr's mean is the corpus CIDEr; BLEU-4 is a
corpus score with no per-example column, so it is no row (it stays in
av_tasks.json's `scalars`, with every evaluator's final scalars).

The embedded world must be built first (`python -m metalm_jax.data.build
--world=tiny`, into --data_dir, default $METALM_DATA_DIR or
~/.cache/metalm_jax/tfds). Writes <workdir>/av_tasks.json (with the run's
provenance, metalm_jax/provenance.py) and av_tasks.md (the table, each
stage's wall and CPU time and the machine's load average).
Runs on one device (mesh 1x1x1). Measured with the defaults on world 1.4.0
(300 examples): 11.2 min wall on 2 CPU cores shared with other jobs
(benchmarks/results/av_tasks.md, with the load average).
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from typing import Any, Dict, List, Mapping, Sequence, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

from metalm_jax import provenance  # noqa: E402
from metalm_jax.evaluate import stats  # noqa: E402

BLIND = "blind"        # the evaluator of the same run on blanked media
NUM_SAMPLES = 2000     # bootstrap resamples per row
EXAMPLES = 300         # evaluation examples per task: the tiny world's validation split

# task -> (its evaluator, MetaLM's per-example column,
#          baselines: (label, evaluator whose rows hold it, its column))
TASKS = {
    "audio caption": ("caption", "CIDEr", (
        ("most frequent training caption", "caption", "fixed_CIDEr"),
        ("same model, silent clip", BLIND, "CIDEr"))),
    "video QA": ("vqa", "accuracy", (
        ("majority answer", "vqa", "majority_accuracy"),
        ("same model, blank video", BLIND, "accuracy"))),
    "audio QA": ("vqa", "accuracy", (
        ("majority answer", "vqa", "majority_accuracy"),
        ("same model, silent clip", BLIND, "accuracy"))),
}


def eval_rows(run_workdir: str, evaluator: str, step: int) -> List[Dict[str, Any]]:
  """The predictions rows `evaluator` wrote at `step` in a run
  (evaluate/evaluators/runner.py); a missing or empty file is an error."""
  from metalm_jax.evaluate.evaluators import runner
  rows = runner.read_predictions(run_workdir, evaluator, step)
  if not rows:
    raise FileNotFoundError(f"{run_workdir}/evals/{evaluator}_step_{step}.jsonl: no predictions "
                            f"of evaluator {evaluator!r} at step {step}")
  return rows


def task_rows(task: str, evals: Mapping[str, Sequence[Mapping[str, Any]]],
              num_samples: int = NUM_SAMPLES) -> List[Dict[str, Any]]:
  """The table rows of one finetuned task from its evaluators' predictions
  rows (`evals`: {evaluator name: rows}, e.g. {"vqa": .., "blind": ..}), one
  per baseline: task, metric, baseline (its label), metalm, baseline_value,
  diff, ci95, n, holds, flags, majority_prediction_share. A missing
  evaluator or column, or rows that do not pair by index, are errors."""
  ev, metric, baselines = TASKS[task]
  own = list(evals[ev])
  preds = [str(r["prediction"]) for r in own]
  out = []
  for label, source, column in baselines:
    a, b = (own, own) if source == ev else stats.align(own, evals[source])
    res = stats.verdict([stats.column(a, metric)], [stats.column(b, column)], preds,
                        num_samples=num_samples, seed=0)
    out.append(dict(task=task, metric=metric, baseline=label,
                    baseline_source=f"{source}/{column}", metalm=res["metalm"],
                    baseline_value=res["baseline"], diff=res["diff"],
                    ci95=[float(x) for x in res["ci95"]], n=res["n"], holds=res["holds"],
                    flags=res["flags"], majority_prediction_share=res["majority_prediction_share"]))
  return out


def rows_of(evals: Mapping[str, Mapping[str, Sequence[Mapping[str, Any]]]],
            num_samples: int = NUM_SAMPLES) -> List[Dict[str, Any]]:
  """Table rows of every finetuned task (`evals[task]`: {evaluator: rows})."""
  return [row for task, ev in evals.items() for row in task_rows(task, ev, num_samples)]


LEGEND = (f"diff: MetaLM - baseline on the same clips, with its 95% paired bootstrap "
          f"interval ({NUM_SAMPLES} resamples over the clips); holds: the interval lies "
          f"above 0 and MetaLM's most frequent prediction covers at most "
          f"{stats.SINGLE_CLASS_SHARE:.0%} of the clips.")


def markdown(rows: Sequence[Dict[str, Any]]) -> str:
  lines = ["| task | metric | MetaLM tiny | baseline | baseline value | diff [95% CI] | holds |",
           "|---|---|---|---|---|---|---|"]
  prev = None
  for r in rows:
    head = f"{r['task']} ({r['n']} clips)" if r["task"] != prev else ""
    prev = r["task"]
    holds = "yes" if r["holds"] else "**no**"
    if r["flags"]:
      holds += " (" + "; ".join(r["flags"]) + ")"
    lo, hi = r["ci95"]
    lines.append(f"| {head} | {r['metric']} | {r['metalm']:.3f} | {r['baseline']} | "
                 f"{r['baseline_value']:.3f} | {r['diff']:+.3f} [{lo:+.3f}, {hi:+.3f}] | "
                 f"{holds} |")
  return "\n".join(lines)


def _one_device(c):
  c.mesh.update(data=1, fsdp=1, tensor=1)
  c.metrics.peak_flops = 1e12  # skip the start-up matmul measurement
  return c


def _train(config, workdir, resume=False):
  """Trains in `workdir`; a finetuning dir must be fresh (the trainer would
  resume from a checkpoint left there by another run)."""
  from metalm_jax.train import trainer
  if not resume and os.path.exists(workdir):
    raise SystemExit(f"{workdir} exists; pass a fresh --workdir (or remove it)")
  t0 = time.time()
  out = trainer.train(config, workdir)
  print(f"  {workdir}: {time.time() - t0:.0f} s", flush=True)
  return out


def _finetune(cfg, steps: int, examples: int, evaluator: str, data_dir: str, lr: float):
  """One finetuning config evaluated once, at its last step: its evaluator
  (with the trivial baseline) and the same evaluator on blanked media;
  `lr` > 0 replaces the config's learning rate."""
  cfg = _one_device(cfg)
  if lr > 0:
    cfg.optimizer.lr = lr
  cfg.data.data_dir = data_dir
  cfg.eval_loss.every_steps = steps
  cfg.checkpoint.every_steps = steps
  ev = cfg.evals[evaluator].to_dict()
  ev.update(every_steps=steps, num_examples=examples)
  if ev["type"] == "caption":
    ev["meteor"] = False  # BLEU-4 and CIDEr only (METEOR / SPICE start Java)
  cfg.evals = {evaluator: ev, BLIND: dict(ev, blind=True, num_baseline_examples=0)}
  return cfg


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--workdir", required=True)
  p.add_argument("--pretrained", default="", help="reuse this pretraining workdir")
  p.add_argument("--pretrain_steps", type=int, default=600)
  p.add_argument("--finetune_steps", type=int, default=300)
  p.add_argument("--audio_qa_steps", type=int, default=150, help="0: no audio QA stage")
  p.add_argument("--finetune_lr", type=float, default=0.0, help="0: each config's lr")
  p.add_argument("--examples", type=int, default=EXAMPLES,
                 help=f"evaluated clips per task ({EXAMPLES}: the tiny world's validation split)")
  p.add_argument("--data_dir", default="")
  args = p.parse_args(argv)
  begun = provenance.start()
  from configs import finetune_caption, finetune_vqa, pretrain_av
  from metalm_jax import presets

  data_dir = args.data_dir or presets.default_data_dir()
  os.makedirs(args.workdir, exist_ok=True)
  times: Dict[str, float] = {}  # wall seconds per stage
  cpu: Dict[str, float] = {}    # this process's CPU seconds (user + sys) per stage
  load = [os.getloadavg()[0]]

  def cpu_now():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime

  def stage(name, cfg, workdir, resume=False):
    t0, c0 = time.time(), cpu_now()
    out = _train(cfg, workdir, resume=resume)
    times[name], cpu[name] = round(time.time() - t0, 1), round(cpu_now() - c0, 1)
    load.append(os.getloadavg()[0])
    return out

  pre = args.pretrained or os.path.join(args.workdir, "pretrain")
  pretrain = {}
  if not args.pretrained:
    print("1. four-modality pretraining", flush=True)
    c = _one_device(pretrain_av.get_config(f"size=tiny,steps={args.pretrain_steps}"))
    c.data.data_dir = data_dir
    c.eval_loss.every_steps = c.checkpoint.every_steps = args.pretrain_steps
    pretrain = stage("pretrain", c, pre, resume=True)

  steps = args.finetune_steps
  plan: List[Tuple[str, object, int, str]] = [
      ("audio caption", finetune_caption.get_config(
          f"size=tiny,modality=audio,init={pre},steps={steps}"), steps, "caption"),
      ("video QA", finetune_vqa.get_config(
          f"size=tiny,modality=video,init={pre},steps={steps}"), steps, "vqa")]
  if args.audio_qa_steps:
    plan.append(("audio QA", finetune_vqa.get_config(
        f"size=tiny,modality=audio,init={pre},steps={args.audio_qa_steps}"),
        args.audio_qa_steps, "vqa"))
  scalars, evals = {}, {}
  for i, (task, cfg, n, ev) in enumerate(plan, start=2):
    print(f"{i}. {task} finetuning ({n} steps)", flush=True)
    run = os.path.join(args.workdir, task.replace(" ", "_"))
    out = stage(task, _finetune(cfg, n, args.examples, ev, data_dir, args.finetune_lr), run)
    scalars[task] = {k: v for k, v in out.items() if k.startswith((f"{ev}/", f"{BLIND}/"))}
    step = int(out.get("step", n))
    evals[task] = {name: eval_rows(run, name, step) for name in (ev, BLIND)}

  rows = rows_of(evals)
  table = markdown(rows)
  print(table, flush=True)
  summary = dict(pretrained=pre,
                 pretrain_steps=None if args.pretrained else args.pretrain_steps,
                 pretrain_loss=pretrain.get("loss"), finetune_steps=steps,
                 finetune_lr=args.finetune_lr or "config",
                 audio_qa_steps=args.audio_qa_steps, examples=args.examples,
                 stage_seconds=times, total_seconds=round(sum(times.values()), 1),
                 stage_cpu_seconds=cpu,
                 load_average_1min=load, cpu_count=os.cpu_count(),
                 bootstrap=dict(samples=NUM_SAMPLES, seed=0, level=0.95,
                                single_class_share=stats.SINGLE_CLASS_SHARE),
                 rows=rows, scalars=scalars)
  summary = provenance.write_json(os.path.join(args.workdir, "av_tasks.json"), summary, begun)
  with open(os.path.join(args.workdir, "av_tasks.md"), "w") as f:
    f.write(table + "\n\n" + LEGEND + "\n\nstage seconds (wall / CPU): "
            + ", ".join(f"{k} {v:.0f} / {cpu[k]:.0f}" for k, v in times.items())
            + "; 1-min load average at the start and after each stage: "
            + ", ".join(f"{x:.1f}" for x in load) + f" on {os.cpu_count()} cores\n")
  return summary


if __name__ == "__main__":
  main()
