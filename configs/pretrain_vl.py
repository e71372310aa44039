"""Vision-language semi-causal pretraining of MetaLM.

    python -m metalm_jax.main --config=configs/pretrain_vl.py:size=tiny --workdir=/tmp/vl
    python -m metalm_jax.main --config=configs/pretrain_vl.py:size=paper --workdir=gs://...

arg keys: size (tiny | bench | paper), steps (0 = the size's default),
runlocal (a 100-step smoke run on one machine).
size=paper is the paper's recipe: 350k steps of 256 examples, AdamW
b=(0.9, 0.98), wd 0.01, lr 1e-4 with 2.5k warm-up and linear decay, dropout 0.1
(model preset), FSDP over all devices.
"""
from configs import common
from metalm_jax.train import config_defaults

# size -> model / data preset (metalm_jax/presets.py) and the run's settings.
SIZES = {
    "tiny": dict(model="tiny", data="tiny", batch=16, steps=600, lr=2e-3, warmup=30,
                 decay="cosine", log=10, eval=100, ckpt=200),
    "bench": dict(model="bench", data="bench", batch=16, steps=2000, lr=1e-3, warmup=100,
                  decay="cosine", log=20, eval=200, ckpt=500),
    "paper": dict(model="paper_vl", data="paper_vl", batch=256, steps=350_000, lr=1e-4,
                  warmup=2500, decay="linear", log=100, eval=5000, ckpt=5000),
}


def get_config(arg=None):
  a = common.parse_arg(arg, size="tiny", steps=0, runlocal=False)
  s = common.pick_size(a, SIZES)
  c = common.pretrain_config(a, s, "vl", decay=s.decay,
                             end_lr_frac=0.0 if s.decay == "linear" else 0.1)
  if a.size == "paper":
    c.mesh.update(data=1, fsdp=-1, tensor=1)
  if a.runlocal:
    config_defaults.runlocal(c, a.steps)
  return c
