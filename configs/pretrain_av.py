"""Four-modality semi-causal pretraining of MetaLM: text, images, sound clips
and videos of the embedded world dock onto one decoder.

    CONFIG=configs/pretrain_av.py:size=tiny WORKDIR=/tmp/av bash launch/local.sh
    python -m metalm_jax.main --config=configs/pretrain_av.py:size=tiny --workdir=/tmp/av

arg keys: size (tiny), steps (0 = the size's default), runlocal (a 100-step
smoke run). The model is the tiny VL model (vision + text encoders) with an
audio encoder `audio` ("whisper") and a video encoder `video`
(configs/common.py add_av_encoders); the mixture is presets.av_mixture: the
VL rows at 0.7, sound-clip and video captions at 0.15 each.
"""
from configs import common
from metalm_jax.train import config_defaults

# size -> model / data preset (metalm_jax/presets.py) and run-config fields.
SIZES = {
    "tiny": {"model": "tiny", "data": "tiny", "batch_size": 16, "total_steps": 600,
             "optimizer.lr": 2e-3, "optimizer.warmup_steps": 30,
             "log.every_steps": 10, "eval_loss.every_steps": 100, "checkpoint.every_steps": 200},
}


def get_config(arg=None):
  a = common.parse_arg(arg, size="tiny", steps=0, runlocal=False)
  s, fields = common.pick_size(a, SIZES)
  c = common.pretrain_config(a, s, fields, "av")
  if a.runlocal:
    config_defaults.runlocal(c, a.steps)
  return c
