"""Language-only semi-causal pretraining: a causal decoder with a docked
bidirectional language encoder (spans of the text go through the encoder).

    python -m metalm_jax.main --config=configs/pretrain_lang.py:size=tiny --workdir=/tmp/lang
    python -m metalm_jax.main --config=configs/pretrain_lang.py:size=paper --workdir=gs://...

    python -m metalm_jax.main --config=configs/pretrain_lang.py:size=tiny,baseline=gpt \
        --workdir=/tmp/gpt
    python -m metalm_jax.main --config=configs/pretrain_lang.py:size=tiny,norm=deepnorm \
        --workdir=/tmp/lang_deepnorm

arg keys: size (tiny | paper), steps (0 = the size's default),
runlocal (a 100-step smoke run on one machine),
norm (pre | post | deepnorm; "" = the size's: pre-LN in tiny, DeepNorm in
paper, as the paper's language-only decoder),
baseline (gpt: the same-size decoder-only GPT, presets.gpt_baseline: the same
decoder and tokens, no encoder, every row plain causal LM text over the same
token stream; "" = MetaLM).
size=paper is the paper's recipe: 300k steps of 1024 x 2048 tokens, Adam lr
6e-4 with warm-up; the language encoder frozen except its top 2 layers
(`optimizer.encoder_top_layers.text=2`; tiny: the top 1 of 2 layers;
sweep it with --grid='optimizer.encoder_top_layers.text=0,1,2').
"""
from configs import common
from metalm_jax import presets
from metalm_jax.models import layers
from metalm_jax.train import config_defaults

# arg baseline= -> (model config builder, data config builder)
BASELINES = {"gpt": (presets.gpt_baseline, presets.gpt_baseline_data)}

# size -> model / data preset (metalm_jax/presets.py) and run-config fields.
SIZES = {
    "tiny": {"model": "tiny", "data": "tiny", "batch_size": 16, "total_steps": 600,
             "optimizer.lr": 2e-3, "optimizer.warmup_steps": 30,
             "log.every_steps": 10, "eval_loss.every_steps": 100, "checkpoint.every_steps": 200},
    "paper": {"model": "paper_lang", "data": "paper_lang", "batch_size": 1024,
              "total_steps": 300_000, "optimizer.lr": 6e-4, "optimizer.warmup_steps": 3750,
              "log.every_steps": 100, "eval_loss.every_steps": 5000,
              "checkpoint.every_steps": 5000, "mesh.data": 1, "mesh.fsdp": -1},
}


def get_config(arg=None):
  a = common.parse_arg(arg, size="tiny", steps=0, runlocal=False, norm="", baseline="")
  s, fields = common.pick_size(a, SIZES)
  if a.norm and a.norm not in layers.NORM_STYLES:
    raise ValueError(f"config arg norm={a.norm!r} is unknown; known: {layers.NORM_STYLES}")
  if a.baseline and a.baseline not in BASELINES:
    raise ValueError(f"config arg baseline={a.baseline!r} is unknown; known: {sorted(BASELINES)}")
  c = common.pretrain_config(a, s, fields, "lang")
  if a.size == "tiny":  # language-only: the text encoder, no vision
    c.model.encoders = {"text": c.model.encoders.text}
  if a.norm:
    c.model.decoder.norm = a.norm
  if a.baseline:
    model_fn, data_fn = BASELINES[a.baseline]
    c.model, c.data = model_fn(c.model), data_fn(c.data)
  else:
    enc_layers = c.model.encoders.text.num_layers
    c.optimizer.encoder_top_layers = {"text": min(2, enc_layers - 1)}
  if a.runlocal:
    config_defaults.runlocal(c, a.steps)
  return c
