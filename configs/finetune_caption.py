"""Captioning finetuning with the "caption:" prompt after the image (zero-shot
captioning uses "Summarize this image:" instead; see the `zeroshot` evaluator).

    python -m metalm_jax.main --config=configs/finetune_caption.py:size=tiny,init=/tmp/vl \
        --workdir=/tmp/caption
    python -m metalm_jax.main --config=configs/finetune_caption.py:size=paper,init=gs://.../vl \
        --workdir=gs://.../caption --config.data.manual_dirs.metalm_coco_karpathy=/data/coco

tiny: the embedded world's captions; paper: COCO Karpathy (source
`coco_caption_prompted`), lr 1e-5 fixed, evaluated with BLEU-4 / CIDEr (and
METEOR / SPICE where Java is present) on the Karpathy test split, beam 3.

arg `modality` (image | audio | video; tiny only for audio and video):
caption the world's sound clips or videos instead, on the four-modality model
of configs/pretrain_av.py (init from its run), zero-shot prompt
"Describe this sound:" / "Describe this video:".

    python -m metalm_jax.main --config=configs/finetune_caption.py:size=tiny,modality=audio,init=/tmp/av \
        --workdir=/tmp/audio_caption
"""
from configs import common
from configs import finetune_common as F
from metalm_jax.data import formats

# modality -> (world source, zero-shot prompt)
MODALITIES = {"image": ("world_caption", formats.CAPTION_PROMPT),
              "audio": ("world_audio_caption", formats.AUDIO_CAPTION_PROMPT),
              "video": ("world_video_caption", formats.VIDEO_CAPTION_PROMPT)}

SIZES = {  # every: eval and checkpoint interval; examples: evaluated examples
    "tiny": dict(model="tiny", data="tiny", source="world_caption", batch=16, steps=300,
                 lr=5e-4, warmup=20, every=100, examples=64, beam=1),
    "paper": dict(model="paper_vl", data="paper_vl", source="coco_caption", batch=256,
                  steps=20_000, lr=1e-5, warmup=0, every=2000, examples=5000, beam=3),
}


def get_config(arg=None):
  a, s = F.parse(arg, SIZES, modality="image")
  source, every, n, beam = s.source, s.every, s.examples, s.beam
  source, prompt = F.modality_choice(a, MODALITIES, (source, formats.CAPTION_PROMPT))
  c = F.base(a, model=s.model, kind="vl", data=s.data, mixture={source + "_prompted": 1.0},
             batch=s.batch, steps=s.steps, lr=s.lr, warmup=s.warmup, eval_every=every,
             ckpt=every)
  c.data.spans.prefix_max = 0  # no caption prefix through the text encoder here
  if a.modality != "image":
    common.add_av_encoders(c.model)
  decoding = dict(method="beam", beam_size=beam) if beam > 1 else dict(method="greedy")
  split = "test" if a.size == "paper" else "validation"
  c.evals = {
      "caption": F.evaluator("caption", source, every, prompt="caption:", split=split,
                             num_examples=n, max_new_tokens=32, **decoding),
      "zeroshot": F.evaluator("caption", source, every, prompt=prompt,
                              split=split, num_examples=n, max_new_tokens=32, **decoding),
  }
  return c
