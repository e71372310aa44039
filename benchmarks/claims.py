"""The paper-claims miniature on the embedded world (SPEC.md section 6), on CPU:

  1. tiny semi-causal VL pretraining (configs/pretrain_vl.py:size=tiny);
  2. zero-shot captions ("Summarize this image:" and no prompt) of the
     pretrained model: CIDEr vs a fixed-caption baseline (the most frequent
     training caption given for every image);
  3. NLI finetuning with the decoder frozen (configs/finetune_nli.py): accuracy
     vs chance and the majority class;
  4. VQA finetuning (configs/finetune_vqa.py): VQA accuracy vs the majority
     answer, next to the zero-shot VQA accuracy of the pretrained model.

    python benchmarks/claims.py --workdir=/tmp/claims [--pretrained=/tmp/claims/pretrain]
        [--pretrain_steps=2000] [--finetune_steps=300]

Prints a table and writes <workdir>/claims.json. Takes ~15-25 minutes on
2 CPU cores. Runs on one device (mesh 1x1x1).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)


def _one_device(c):
  c.mesh.update(data=1, fsdp=1, tensor=1)
  c.metrics.peak_flops = 1e12  # skip the start-up matmul measurement
  return c


def _train(config, workdir, resume=False):
  """Trains in `workdir`; a finetuning / eval dir must be fresh (the trainer
  would resume from a checkpoint left there by another run)."""
  from metalm_jax.train import trainer
  if not resume and os.path.exists(workdir):
    raise SystemExit(f"{workdir} exists; pass a fresh --workdir (or remove it)")
  t0 = time.time()
  out = trainer.train(config, workdir)
  print(f"  {workdir}: {time.time() - t0:.0f} s", flush=True)
  return out


def _evals_only(init, workdir, evals):
  from configs import pretrain_vl
  c = _one_device(pretrain_vl.get_config("size=tiny"))
  c.total_steps, c.init_from, c.evals = 0, init, evals
  return _train(c, workdir)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--workdir", required=True)
  p.add_argument("--pretrained", default="", help="reuse this pretraining workdir")
  p.add_argument("--pretrain_steps", type=int, default=2000)
  p.add_argument("--finetune_steps", type=int, default=300)
  args = p.parse_args(argv)
  from configs import finetune_nli, finetune_vqa, pretrain_vl
  from metalm_jax.data import formats

  os.makedirs(args.workdir, exist_ok=True)
  pre = args.pretrained or os.path.join(args.workdir, "pretrain")
  if not args.pretrained:
    print("1. pretraining", flush=True)
    _train(_one_device(pretrain_vl.get_config(f"size=tiny,steps={args.pretrain_steps}")), pre,
           resume=True)

  print("2. zero-shot captions and VQA of the pretrained model", flush=True)
  cap = dict(type="caption", source="world_caption", every_steps=1, num_examples=100,
             max_new_tokens=24)
  zs = _evals_only(pre, os.path.join(args.workdir, "zeroshot"), {
      "caption_summarize": dict(cap, prompt=formats.CAPTION_PROMPT),
      "caption_noprompt": dict(cap, prompt=""),
      "vqa": dict(type="vqa", source="world_vqa", every_steps=1, num_examples=200)})

  print("3. NLI finetuning, decoder frozen", flush=True)
  nli_cfg = _one_device(finetune_nli.get_config(
      f"size=tiny,init={pre},steps={args.finetune_steps}"))
  nli_cfg.evals.nli.num_examples = 300
  nli = _train(nli_cfg, os.path.join(args.workdir, "nli"))

  print("4. VQA finetuning", flush=True)
  vqa_cfg = _one_device(finetune_vqa.get_config(
      f"size=tiny,init={pre},steps={args.finetune_steps}"))
  vqa_cfg.evals.vqa.num_examples = 200
  # Extra (SPEC claim 4, not an acceptance item): in-context VQA after finetuning.
  # k=4 does not fit the tiny decoder's 256 positions (5 images of 19 + text).
  vqa_cfg.evals.icl = dict(type="icl", source="world_vqa", every_steps=args.finetune_steps,
                           shots=(0, 1, 2), num_examples=100)
  vqa = _train(vqa_cfg, os.path.join(args.workdir, "vqa"))

  rows = [
      ("zero-shot caption CIDEr, 'Summarize this image:'", zs["caption_summarize/CIDEr"],
       "fixed caption", zs["caption_summarize/fixed_caption_CIDEr"]),
      ("zero-shot caption CIDEr, no prompt", zs["caption_noprompt/CIDEr"],
       "fixed caption", zs["caption_noprompt/fixed_caption_CIDEr"]),
      ("zero-shot caption BLEU-4, no prompt", zs["caption_noprompt/BLEU-4"],
       "fixed caption", zs["caption_noprompt/fixed_caption_BLEU-4"]),
      ("NLI accuracy (label generated), decoder frozen", nli["nli/accuracy_generate"],
       "chance", nli["nli/chance"]),
      ("NLI accuracy (label ranked), decoder frozen", nli["nli/accuracy_rank"],
       "majority class", nli["nli/majority_class"]),
      ("VQA accuracy, zero-shot", zs["vqa/accuracy"],
       "majority answer", zs["vqa/majority_answer_accuracy"]),
      ("VQA accuracy, finetuned", vqa["vqa/accuracy"],
       "majority answer", vqa["vqa/majority_answer_accuracy"]),
  ]
  extra = [(f"in-context VQA accuracy after VQA finetuning, k={k}", vqa[f"icl/k{k}/accuracy"],
            "majority answer", vqa["vqa/majority_answer_accuracy"]) for k in (0, 1, 2)]
  rows += extra
  table = ["| claim | MetaLM tiny | baseline | baseline value |", "|---|---|---|---|"]
  table += [f"| {a} | {b:.3f} | {c} | {d:.3f} |" for a, b, c, d in rows]
  print("\n".join(table), flush=True)
  with open(os.path.join(args.workdir, "claims.json"), "w") as f:
    json.dump({"pretrained": pre, "finetune_steps": args.finetune_steps,
               "rows": [dict(claim=a, value=b, baseline=c, baseline_value=d)
                        for a, b, c, d in rows]}, f, indent=2)
  return rows


if __name__ == "__main__":
  main()
