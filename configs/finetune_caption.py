"""Captioning finetuning with the "caption:" prompt after the image (zero-shot
captioning uses "Summarize this image:" instead; see the `zeroshot` evaluator).

    python -m metalm_jax.main --config=configs/finetune_caption.py:size=tiny,init=/tmp/vl \
        --workdir=/tmp/caption
    python -m metalm_jax.main --config=configs/finetune_caption.py:size=paper,init=gs://.../vl \
        --workdir=gs://.../caption --config.data.manual_dirs.metalm_coco_karpathy=/data/coco

tiny: the embedded world's captions; paper: COCO Karpathy (source
`coco_caption_prompted`), lr 1e-5 fixed, evaluated with BLEU-4 / CIDEr (and
METEOR / SPICE where Java is present) on the Karpathy test split, beam 3.
"""
from configs import finetune_common as F

SIZES = {
    # model, data, source, batch, steps, lr, warm-up, eval every, eval examples, beam
    "tiny": ("tiny", "tiny", "world_caption", 16, 300, 5e-4, 20, 100, 64, 1),
    "paper": ("paper_vl", "paper_vl", "coco_caption", 256, 20_000, 1e-5, 0, 2000, 5000, 3),
}


def get_config(arg=None):
  a = F.parse(arg, SIZES)
  model, data, source, batch, steps, lr, warm, every, n, beam = SIZES[a.size]
  c = F.base(a, model=model, kind="vl", data=data, mixture={source + "_prompted": 1.0},
             batch=batch, steps=steps, lr=lr, warmup=warm, eval_every=every, ckpt=every)
  c.data.spans.prefix_max = 0  # no caption prefix through the text encoder here
  decoding = dict(method="beam", beam_size=beam) if beam > 1 else dict(method="greedy")
  split = "test" if a.size == "paper" else "validation"
  c.evals = {
      "caption": F.evaluator("caption", source, every, prompt="caption:", split=split,
                             num_examples=n, max_new_tokens=32, **decoding),
      "zeroshot": F.evaluator("caption", source, every, prompt="Summarize this image:",
                              split=split, num_examples=n, max_new_tokens=32, **decoding),
  }
  return c
