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
SIZES = {
    # model, data, sources per cluster, batch, steps, lr, warm-up, eval every, eval examples
    "tiny": ("tiny", "tiny", {"caption": "world_caption", "vqa": "world_vqa", "nli": "world_nli"},
             16, 400, 5e-4, 20, 200, 64),
    "paper": ("paper_vl", "paper_vl", {"caption": "coco_caption", "vqa": "vqav2", "nli": "mnli"},
              256, 20_000, 1e-4, 500, 2000, 2000),
}
EVAL_TYPE = {"caption": "caption", "vqa": "vqa", "nli": "classify"}


def get_config(arg=None):
  a = F.parse(arg, SIZES, heldout="nli")
  model, data, sources, batch, steps, lr, warm, every, n = SIZES[a.size]
  if a.heldout not in CLUSTERS + ("none",):
    raise ValueError(f"config arg heldout={a.heldout!r} is unknown; known: {CLUSTERS + ('none',)}")
  train = [k for k in CLUSTERS if k != a.heldout]
  mixture = {f"{sources[k]}_instruct": 1.0 for k in train}
  c = F.base(a, model=model, kind="vl", data=data, mixture=mixture, batch=batch, steps=steps,
             lr=lr, warmup=warm, decay="linear", eval_every=every, ckpt=every)
  c.data.seq_len = max(c.data.seq_len, 80)  # room for the longer templates
  c.data.spans.prefix_max = 0
  c.evals = {}
  for k in CLUSTERS:
    name = f"heldout_{k}" if k == a.heldout else k
    c.evals[name] = F.evaluator(EVAL_TYPE[k], sources[k], every, num_examples=n)
  return c
