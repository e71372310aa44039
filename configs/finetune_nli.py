"""NLI finetuning with the decoder frozen: only the language encoder and its
connector train (the paper's MNLI setting). "P question: H" goes through the
bidirectional encoder as one item (so the encoder can compare premise and
hypothesis; the frozen decoder only reads the result), "true, false or
neither? answer:" is plain text and the label word is generated
(task `nli_encoded`; the text encoder's max_len is raised to hold the pair,
which does not change its parameters).

    python -m metalm_jax.main --config=configs/finetune_nli.py:size=tiny,init=/tmp/vl \
        --workdir=/tmp/nli
    python -m metalm_jax.main --config=configs/finetune_nli.py:size=paper,init=gs://.../lang \
        --workdir=gs://.../mnli

tiny: the embedded world's NLI with the tiny VL model (its text encoder);
the vision encoder is frozen too (unused here; frozen so weight decay leaves
it alone). paper: MNLI (source `mnli`, from TFDS glue/mnli) on the
language-only paper model, batch 32, lr 5e-5, 3 epochs (392,702 pairs).
"""
from configs import finetune_common as F

SIZES = {  # every: eval and checkpoint interval; examples: evaluated examples
    "tiny": dict(model="tiny", data="tiny", source="world_nli_encoded", batch=16, steps=300,
                 lr=1e-3, warmup=20, every=100, examples=150),
    "paper": dict(model="paper_lang", data="paper_lang", source="mnli_encoded", batch=32,
                  steps=3 * 392_702 // 32, lr=5e-5, warmup=2000, every=5000, examples=9815),
}


def get_config(arg=None):
  a, s = F.parse(arg, SIZES)
  source, every = s.source, s.every
  kind = "lang" if a.size == "paper" else "vl"
  c = F.base(a, model=s.model, kind=kind, data=s.data, mixture={source: 1.0}, batch=s.batch,
             steps=s.steps, lr=s.lr, warmup=s.warmup, decay="linear", eval_every=every,
             ckpt=every)
  c.data.seq_len = 96 if a.size == "tiny" else 320
  c.model.encoders.text.max_len = 64 if a.size == "tiny" else 256
  frozen = ["decoder"] + [f"{p}_{n}" for n in c.model.encoders
                          if c.model.encoders[n].type != "bert"
                          for p in ("encoders", "connectors")]
  c.optimizer.groups = {"frozen": F.frozen(*frozen)}
  c.evals = {"nli": F.evaluator("classify", source, every, num_examples=s.examples)}
  return c
