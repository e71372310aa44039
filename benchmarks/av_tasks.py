"""Audio captioning and video QA on the embedded world against trivial
baselines, on CPU (the audio / video half of the paper-claims miniature,
benchmarks/claims.py):

  1. tiny four-modality semi-causal pretraining
     (configs/pretrain_av.py:size=tiny: text, images, sound clips, videos);
  2. audio-caption finetuning (configs/finetune_caption.py:modality=audio):
     CIDEr of the generated captions ("caption:") vs the most frequent
     training caption given for every clip, and vs the same model given a
     silent clip (evaluator field `blind`: modality-blind);
  3. video-QA finetuning (configs/finetune_vqa.py:modality=video): VQA
     accuracy vs the majority answer and vs the same model given a blank video;
  4. (--audio_qa_steps > 0) audio-QA finetuning, the same three numbers.

    python benchmarks/av_tasks.py --workdir=/tmp/av_tasks [--pretrained=/tmp/av_tasks/pretrain]
        [--pretrain_steps=300] [--finetune_steps=150] [--audio_qa_steps=0]

The embedded world must be built first (`python -m metalm_jax.data.build
--world=tiny`, into --data_dir, default $METALM_DATA_DIR or
~/.cache/metalm_jax/tfds). Writes <workdir>/av_tasks.json and av_tasks.md
(the table, each stage's wall and CPU time and the machine's load average).
Runs on one device (mesh 1x1x1). Measured with the defaults: 15.9 min wall,
15.5 min of process CPU time, on 2 CPU cores shared with other jobs (load
average 3-5.6); benchmarks/results/av_tasks.md.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from typing import Dict, List, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)


def _caption(metric):
  return ("caption", metric, (("most frequent training caption",
                               f"caption/fixed_caption_{metric}"),
                              ("same model, silent clip", f"blind/{metric}")))


# task -> its rows: (evaluator name, metric, baselines: (label, result key))
TASKS = {
    "audio caption": (_caption("CIDEr"), _caption("BLEU-4")),
    "video QA": (("vqa", "accuracy", (("majority answer", "vqa/majority_answer_accuracy"),
                                      ("same model, blank video", "blind/accuracy"))),),
    "audio QA": (("vqa", "accuracy", (("majority answer", "vqa/majority_answer_accuracy"),
                                      ("same model, silent clip", "blind/accuracy"))),),
}


def rows_of(results: Dict[str, Dict[str, float]]) -> List[dict]:
  """Table rows from each finetuned task's final scalars (`results[task]`):
  the model's metric, each baseline's value and whether the model beats it."""
  rows = []
  for task, out in results.items():
    for ev, metric, baselines in TASKS[task]:
      value = float(out[f"{ev}/{metric}"])
      base = [dict(baseline=label, value=float(out[key]), beaten=value > float(out[key]))
              for label, key in baselines]
      rows.append(dict(task=task, metric=metric, value=value, baselines=base,
                       examples=int(out[f"{ev}/examples"])))
  return rows


def markdown(rows: List[dict]) -> str:
  lines = ["| task | metric | MetaLM tiny | baseline | baseline value | beaten |",
           "|---|---|---|---|---|---|"]
  for r in rows:
    for i, b in enumerate(r["baselines"]):
      head = (f"{r['task']} ({r['examples']} clips)", r["metric"], f"{r['value']:.3f}") if i == 0 \
          else ("", "", "")
      lines.append("| " + " | ".join(head + (b["baseline"], f"{b['value']:.3f}",
                                            "yes" if b["beaten"] else "no")) + " |")
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
  cfg.eval_every = steps
  cfg.checkpoint.every_steps = steps
  ev = cfg.evals[evaluator].to_dict()
  ev.update(every_steps=steps, num_examples=examples)
  if ev["type"] == "caption":
    ev["meteor"] = False  # BLEU-4 and CIDEr only (METEOR / SPICE start Java)
  cfg.evals = {evaluator: ev, "blind": dict(ev, blind=True, num_baseline_examples=0)}
  return cfg


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--workdir", required=True)
  p.add_argument("--pretrained", default="", help="reuse this pretraining workdir")
  p.add_argument("--pretrain_steps", type=int, default=600)
  p.add_argument("--finetune_steps", type=int, default=300)
  p.add_argument("--audio_qa_steps", type=int, default=150, help="0: no audio QA stage")
  p.add_argument("--finetune_lr", type=float, default=0.0, help="0: each config's lr")
  p.add_argument("--examples", type=int, default=64, help="evaluated clips per task")
  p.add_argument("--data_dir", default="")
  args = p.parse_args(argv)
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
    c.eval_every = c.checkpoint.every_steps = args.pretrain_steps
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
  results = {}
  for i, (task, cfg, n, ev) in enumerate(plan, start=2):
    print(f"{i}. {task} finetuning ({n} steps)", flush=True)
    results[task] = stage(task, _finetune(cfg, n, args.examples, ev, data_dir, args.finetune_lr),
                          os.path.join(args.workdir, task.replace(" ", "_")))

  rows = rows_of(results)
  table = markdown(rows)
  print(table, flush=True)
  summary = dict(pretrained=pre,
                 pretrain_steps=None if args.pretrained else args.pretrain_steps,
                 pretrain_loss=pretrain.get("loss"), finetune_steps=steps,
                 finetune_lr=args.finetune_lr or "config",
                 audio_qa_steps=args.audio_qa_steps, examples=args.examples,
                 stage_seconds=times, total_seconds=round(sum(times.values()), 1),
                 stage_cpu_seconds=cpu,
                 load_average_1min=load, cpu_count=os.cpu_count(), rows=rows)
  with open(os.path.join(args.workdir, "av_tasks.json"), "w") as f:
    json.dump(summary, f, indent=2)
  with open(os.path.join(args.workdir, "av_tasks.md"), "w") as f:
    f.write(table + "\n\nstage seconds (wall / CPU): "
            + ", ".join(f"{k} {v:.0f} / {cpu[k]:.0f}" for k, v in times.items())
            + "; 1-min load average at the start and after each stage: "
            + ", ".join(f"{x:.1f}" for x in load) + f" on {os.cpu_count()} cores\n")
  return summary


if __name__ == "__main__":
  main()
