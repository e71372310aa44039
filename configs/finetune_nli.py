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

KNOBS = ("source", "examples")  # the trained and evaluated source; evaluated examples
SIZES = {
    "tiny": {"model": "tiny", "data": "tiny", "source": "world_nli_encoded", "examples": 150,
             "batch_size": 16, "total_steps": 300, "optimizer.lr": 1e-3,
             "optimizer.warmup_steps": 20, "optimizer.decay": "linear",
             "eval_loss.every_steps": 100, "checkpoint.every_steps": 100,
             "data.seq_len": 96, "model.encoders.text.max_len": 64},
    "paper": {"model": "paper_lang", "data": "paper_lang", "source": "mnli_encoded",
              "examples": 9815, "batch_size": 32, "total_steps": 3 * 392_702 // 32,
              "optimizer.lr": 5e-5, "optimizer.warmup_steps": 2000, "optimizer.decay": "linear",
              "eval_loss.every_steps": 5000, "checkpoint.every_steps": 5000,
              "data.seq_len": 320, "model.encoders.text.max_len": 256},
}


def get_config(arg=None):
  a, s, fields = F.parse(arg, SIZES, KNOBS)
  source = s.source
  kind = "lang" if a.size == "paper" else "vl"
  c = F.base(a, s, fields, kind=kind, mixture={source: 1.0})
  every = c.eval_loss.every_steps
  frozen = ["decoder"] + [f"{p}_{n}" for n in c.model.encoders
                          if c.model.encoders[n].type != "bert"
                          for p in ("encoders", "connectors")]
  c.optimizer.groups = {"frozen": F.frozen(*frozen)}
  c.evals = {"nli": F.evaluator("classify", source, every, num_examples=s.examples)}
  return c
