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
from configs import data as data_configs
from metalm_jax.train import config_defaults

# size -> (model preset, data preset, batch, steps, lr, warm-up, decay, log, eval, ckpt)
SIZES = {
    "tiny": ("tiny", "tiny", 16, 600, 2e-3, 30, "cosine", 10, 100, 200),
    "bench": ("bench", "bench", 16, 2000, 1e-3, 100, "cosine", 20, 200, 500),
    "paper": ("paper_vl", "paper_vl", 256, 350_000, 1e-4, 2500, "linear", 100, 5000, 5000),
}


def get_config(arg=None):
  a = common.parse_arg(arg, size="tiny", steps=0, runlocal=False)
  if a.size not in SIZES:
    raise ValueError(f"config arg size={a.size!r} is unknown; known: {sorted(SIZES)}")
  model, data, batch, steps, lr, warm, decay, log, ev, ck = SIZES[a.size]
  c = config_defaults.trainer_config()
  c.model = common.model_config(model)
  c.data = data_configs.data_config("vl", data)
  c.batch_size = batch
  c.total_steps = a.steps or steps
  c.log_every, c.eval_every = log, ev
  c.checkpoint.every_steps = ck
  c.optimizer = config_defaults.optimizer(lr=lr, b1=0.9, b2=0.98, weight_decay=0.01,
                                          warmup_steps=warm, decay=decay,
                                          end_lr_frac=0.0 if decay == "linear" else 0.1)
  if a.size == "paper":
    c.mesh.update(data=1, fsdp=-1, tensor=1)
  if a.runlocal:
    config_defaults.runlocal(c, a.steps)
  return c
