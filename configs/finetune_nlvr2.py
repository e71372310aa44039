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

SIZES = {  # every: eval and checkpoint interval; examples: evaluated examples
    "tiny": dict(model="tiny", data="tiny", batch=16, steps=400, lr=5e-4, warmup=20, every=100,
                 examples=128, seq_len=128),
    "paper": dict(model="paper_vl", data="paper_vl", batch=128, steps=10_000, lr=1e-5, warmup=0,
                  every=2000, examples=2000, seq_len=512),
}


def get_config(arg=None):
  a, s = F.parse(arg, SIZES)
  c = F.base(a, model=s.model, kind="vl", data=s.data, mixture={"world_pair": 1.0},
             batch=s.batch, steps=s.steps, lr=s.lr, warmup=s.warmup, eval_every=s.every,
             ckpt=s.every)
  c.model.encoders.vision.max_items = 2
  c.data.seq_len = s.seq_len
  c.data.spans.prefix_max = 0
  c.evals = {"nlvr2": F.evaluator("classify", "world_pair", s.every,
                                  num_examples=s.examples)}
  return c
