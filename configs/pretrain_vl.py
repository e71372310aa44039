"""Vision-language semi-causal pretraining of MetaLM.

    python -m metalm_jax.main --config=configs/pretrain_vl.py:size=tiny --workdir=/tmp/vl
    python -m metalm_jax.main --config=configs/pretrain_vl.py:size=paper --workdir=gs://...
    python -m metalm_jax.main --config=configs/pretrain_vl.py:size=modern --workdir=gs://...
    python -m metalm_jax.main \
        --config=configs/pretrain_vl.py:size=tiny,decoder=llama,vision=siglip \
        --workdir=/tmp/vl_llama

arg keys: size (tiny | bench | paper | modern), steps (0 = the size's default),
runlocal (a 100-step smoke run on one machine), decoder (gpt2 | llama | qwen2 |
gemma: the decoder family at the size's dimensions; "" = the size's own) and
vision (clip | siglip: the vision tower's shape; "" = the size's own).
size=paper is the paper's recipe: 350k steps of 256 examples, AdamW
b=(0.9, 0.98), wd 0.01, lr 1e-4 with 2.5k warm-up and linear decay, dropout 0.1
(model preset), FSDP over all devices. size=modern is the same recipe on
presets.modern_vl: a Llama-3.2-1B-shaped decoder and a SigLIP-B/16-shaped ViT
(import their weights first: docs/weights-and-serving.md).
"""
from configs import common
from metalm_jax.train import config_defaults

# size -> model / data preset (metalm_jax/presets.py) and run-config fields.
SIZES = {
    "tiny": {"model": "tiny", "data": "tiny", "batch_size": 16, "total_steps": 600,
             "optimizer.lr": 2e-3, "optimizer.warmup_steps": 30,
             "log.every_steps": 10, "eval_loss.every_steps": 100, "checkpoint.every_steps": 200},
    "bench": {"model": "bench", "data": "bench", "batch_size": 16, "total_steps": 2000,
              "optimizer.lr": 1e-3, "optimizer.warmup_steps": 100,
              "log.every_steps": 20, "eval_loss.every_steps": 200, "checkpoint.every_steps": 500},
    "paper": {"model": "paper_vl", "data": "paper_vl", "batch_size": 256, "total_steps": 350_000,
              "optimizer.lr": 1e-4, "optimizer.warmup_steps": 2500, "optimizer.decay": "linear",
              "optimizer.end_lr_frac": 0.0, "log.every_steps": 100,
              "eval_loss.every_steps": 5000, "checkpoint.every_steps": 5000,
              "mesh.data": 1, "mesh.fsdp": -1},
}
SIZES["modern"] = {**SIZES["paper"], "model": "modern_vl"}


def get_config(arg=None):
  a = common.parse_arg(arg, size="tiny", steps=0, runlocal=False, decoder="", vision="")
  s, fields = common.pick_size(a, SIZES)
  c = common.pretrain_config(a, s, fields, "vl")
  common.set_shapes(c.model, a.decoder, a.vision)
  if a.runlocal:
    config_defaults.runlocal(c, a.steps)
  return c
