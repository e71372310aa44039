"""Language-only semi-causal pretraining: a causal decoder with a docked
bidirectional language encoder (spans of the text go through the encoder).

    python -m metalm_jax.main --config=configs/pretrain_lang.py:size=tiny --workdir=/tmp/lang
    python -m metalm_jax.main --config=configs/pretrain_lang.py:size=paper --workdir=gs://...

arg keys: size (tiny | paper), steps (0 = the size's default),
runlocal (a 100-step smoke run on one machine).
size=paper is the paper's recipe: 300k steps of 1024 x 2048 tokens, Adam lr
6e-4 with warm-up; the language encoder frozen except its top 2 layers
(optimizer group `frozen_text_encoder`, a lookahead regex).
"""
from configs import common
from configs import data as data_configs
from metalm_jax.train import config_defaults

# size -> (model preset, data preset, batch, steps, lr, warm-up, log, eval, ckpt)
SIZES = {
    "tiny": ("tiny", "tiny", 16, 600, 2e-3, 30, 10, 100, 200),
    "paper": ("paper_lang", "paper_lang", 1024, 300_000, 6e-4, 3750, 100, 5000, 5000),
}


def frozen_encoder_regex(num_layers: int, top: int = 2, name: str = "text") -> str:
  """Every param of encoder `name` except its top `top` layers."""
  keep = "|".join(str(i) for i in range(num_layers - top, num_layers))
  return rf"^encoders_{name}/bert/(?!layers_({keep})/)"


def get_config(arg=None):
  a = common.parse_arg(arg, size="tiny", steps=0, runlocal=False)
  if a.size not in SIZES:
    raise ValueError(f"config arg size={a.size!r} is unknown; known: {sorted(SIZES)}")
  model, data, batch, steps, lr, warm, log, ev, ck = SIZES[a.size]
  c = config_defaults.trainer_config()
  c.model = common.model_config(model)
  if a.size == "tiny":  # language-only: the text encoder, no vision
    c.model.encoders = {"text": c.model.encoders.text}
  c.data = data_configs.data_config("lang", data)
  c.batch_size = batch
  c.total_steps = a.steps or steps
  c.log_every, c.eval_every = log, ev
  c.checkpoint.every_steps = ck
  c.optimizer = config_defaults.optimizer(lr=lr, b1=0.9, b2=0.98, weight_decay=0.01,
                                          warmup_steps=warm, decay="cosine", end_lr_frac=0.1)
  enc_layers = c.model.encoders.text.num_layers
  c.optimizer.groups = {"frozen_text_encoder": dict(
      regex=frozen_encoder_regex(enc_layers, min(2, enc_layers - 1)), frozen=True, lr_mult=1.0)}
  if a.size == "paper":
    c.mesh.update(data=1, fsdp=-1, tensor=1)
  if a.runlocal:
    config_defaults.runlocal(c, a.steps)
  return c
