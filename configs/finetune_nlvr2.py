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

KNOBS = ("examples",)  # evaluated examples
SIZES = {
    "tiny": {"model": "tiny", "data": "tiny", "examples": 128, "batch_size": 16,
             "total_steps": 400, "optimizer.lr": 5e-4, "optimizer.warmup_steps": 20,
             "eval_loss.every_steps": 100, "checkpoint.every_steps": 100, "data.seq_len": 128},
    "paper": {"model": "paper_vl", "data": "paper_vl", "examples": 2000, "batch_size": 128,
              "total_steps": 10_000, "optimizer.lr": 1e-5, "optimizer.warmup_steps": 0,
              "eval_loss.every_steps": 2000, "checkpoint.every_steps": 2000,
              "data.seq_len": 512},
}


def get_config(arg=None):
  a, s, fields = F.parse(arg, SIZES, KNOBS)
  c = F.base(a, s, fields, kind="vl", mixture={"world_pair": 1.0})
  c.model.encoders.vision.max_items = 2
  c.data.spans.prefix_max = 0
  c.evals = {"nlvr2": F.evaluator("classify", "world_pair", c.eval_loss.every_steps,
                                  num_examples=s.examples)}
  return c
