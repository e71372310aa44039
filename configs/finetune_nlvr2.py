"""Two-image finetuning (NLVR2-style): the left and right images are encoded
separately (one vision-encoder item each), then "statement: S true or false?
answer:" and the label word.

    python -m metalm_jax.main --config=configs/finetune_nlvr2.py:size=tiny,init=/tmp/vl \
        --workdir=/tmp/nlvr2

tiny: `world_pair` pairs an embedded-world scene with an edited copy (an
object dropped or recoloured) and states a fact about the two (counts,
presence in one or both). model.encoders.vision.max_items is 2 (parameters
do not depend on it, so a one-image pretraining checkpoint loads).
paper: the same at paper size (224 px); no NLVR2 builder exists among the
real-data sources yet, so it reads the embedded world's paper variant.
"""
from configs import finetune_common as F

SIZES = {
    # model, data, batch, steps, lr, warm-up, eval every, eval examples, seq_len
    "tiny": ("tiny", "tiny", 16, 400, 5e-4, 20, 100, 128, 128),
    "paper": ("paper_vl", "paper_vl", 128, 10_000, 1e-5, 0, 2000, 2000, 512),
}


def get_config(arg=None):
  a = F.parse(arg, SIZES)
  model, data, batch, steps, lr, warm, every, n, seq_len = SIZES[a.size]
  c = F.base(a, model=model, kind="vl", data=data, mixture={"world_pair": 1.0}, batch=batch,
             steps=steps, lr=lr, warmup=warm, eval_every=every, ckpt=every)
  c.model.encoders.vision.max_items = 2
  c.data.seq_len = seq_len
  c.data.spans.prefix_max = 0
  c.evals = {"nlvr2": F.evaluator("classify", "world_pair", every, num_examples=n)}
  return c
