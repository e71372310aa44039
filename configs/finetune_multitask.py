"""Multitask / instruction tuning: several templates per task (drawn per row,
metalm_jax/data/formats.py, the *_instruct formats) over task clusters, with one
cluster held out and evaluated zero-shot.

    python -m metalm_jax.main \
        --config=configs/finetune_multitask.py:size=tiny,heldout=nli,init=/tmp/vl \
        --workdir=/tmp/multitask

arg keys: size, steps, init, heldout (caption | vqa | nli | none).
tiny: the world's caption / VQA / NLI clusters. paper: COCO captions, VQAv2
and MNLI in the same templates (the paper's FLAN collection is not among the
sources here), 20k steps of 256, lr 1e-4.
"""
from configs import finetune_common as F

CLUSTERS = ("caption", "vqa", "nli")
KNOBS = ("sources", "examples")  # the source of each cluster; evaluated examples
SIZES = {
    "tiny": {"model": "tiny", "data": "tiny",
             "sources": {"caption": "world_caption", "vqa": "world_vqa", "nli": "world_nli"},
             "examples": 64, "batch_size": 16, "total_steps": 400, "optimizer.lr": 5e-4,
             "optimizer.warmup_steps": 20, "optimizer.decay": "linear",
             "eval_loss.every_steps": 200, "checkpoint.every_steps": 200},
    "paper": {"model": "paper_vl", "data": "paper_vl",
              "sources": {"caption": "coco_caption", "vqa": "vqav2", "nli": "mnli"},
              "examples": 2000, "batch_size": 256, "total_steps": 20_000, "optimizer.lr": 1e-4,
              "optimizer.warmup_steps": 500, "optimizer.decay": "linear",
              "eval_loss.every_steps": 2000, "checkpoint.every_steps": 2000},
}
EVAL_TYPE = {"caption": "caption", "vqa": "vqa", "nli": "classify"}


def get_config(arg=None):
  a, s, fields = F.parse(arg, SIZES, KNOBS, heldout="nli")
  sources, n = s.sources, s.examples
  if a.heldout not in CLUSTERS + ("none",):
    raise ValueError(f"config arg heldout={a.heldout!r} is unknown; known: {CLUSTERS + ('none',)}")
  train = [k for k in CLUSTERS if k != a.heldout]
  mixture = {f"{sources[k]}_instruct": 1.0 for k in train}
  c = F.base(a, s, fields, kind="vl", mixture=mixture)
  every = c.eval_loss.every_steps
  c.data.seq_len = max(c.data.seq_len, 80)  # room for the longer templates
  c.data.spans.prefix_max = 0
  c.evals = {}
  for k in CLUSTERS:
    name = f"heldout_{k}" if k == a.heldout else k
    c.evals[name] = F.evaluator(EVAL_TYPE[k], sources[k], every, num_examples=n)
  return c
