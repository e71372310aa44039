"""Multitask / instruction tuning: several templates per task (drawn per row,
metalm_jax/data/formats.py, the *_instruct formats) over task clusters, with one
cluster held out and evaluated zero-shot.

    python -m metalm_jax.main --config=configs/finetune_multitask.py:size=tiny,heldout=nli,init=/tmp/vl \
        --workdir=/tmp/multitask

arg keys: size, steps, init, heldout (caption | vqa | nli | none).
tiny: the world's caption / VQA / NLI clusters. paper: COCO captions, VQAv2
and MNLI in the same templates (the paper's FLAN collection is not among the
sources here), 20k steps of 256, lr 1e-4.
"""
from configs import finetune_common as F

CLUSTERS = ("caption", "vqa", "nli")
SIZES = {  # sources: per cluster; every: eval and checkpoint interval; examples: evaluated
    "tiny": dict(model="tiny", data="tiny",
                 sources={"caption": "world_caption", "vqa": "world_vqa", "nli": "world_nli"},
                 batch=16, steps=400, lr=5e-4, warmup=20, every=200, examples=64),
    "paper": dict(model="paper_vl", data="paper_vl",
                  sources={"caption": "coco_caption", "vqa": "vqav2", "nli": "mnli"},
                  batch=256, steps=20_000, lr=1e-4, warmup=500, every=2000, examples=2000),
}
EVAL_TYPE = {"caption": "caption", "vqa": "vqa", "nli": "classify"}


def get_config(arg=None):
  a, s = F.parse(arg, SIZES, heldout="nli")
  sources, every, n = s.sources, s.every, s.examples
  if a.heldout not in CLUSTERS + ("none",):
    raise ValueError(f"config arg heldout={a.heldout!r} is unknown; known: {CLUSTERS + ('none',)}")
  train = [k for k in CLUSTERS if k != a.heldout]
  mixture = {f"{sources[k]}_instruct": 1.0 for k in train}
  c = F.base(a, model=s.model, kind="vl", data=s.data, mixture=mixture, batch=s.batch,
             steps=s.steps, lr=s.lr, warmup=s.warmup, decay="linear", eval_every=every,
             ckpt=every)
  c.data.seq_len = max(c.data.seq_len, 80)  # room for the longer templates
  c.data.spans.prefix_max = 0
  c.evals = {}
  for k in CLUSTERS:
    name = f"heldout_{k}" if k == a.heldout else k
    c.evals[name] = F.evaluator(EVAL_TYPE[k], sources[k], every, num_examples=n)
  return c
