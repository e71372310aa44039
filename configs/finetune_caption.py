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

    python -m metalm_jax.main \
        --config=configs/finetune_caption.py:size=tiny,modality=audio,init=/tmp/av \
        --workdir=/tmp/audio_caption

arg `dataset=NAME`: your own data set (docs/your-data.md), built into the data
dir with `python -m metalm_jax.data.build --data_dir=D --world= --jsonl=NAME:FOLDER`:
trains on source NAME_caption_prompted (NAME_audio_caption_prompted,
NAME_video_caption_prompted with modality=audio / video) and evaluates CIDEr
on NAME's validation split, at any size.

    python -m metalm_jax.main \
        --config=configs/finetune_caption.py:size=tiny,dataset=pets,init=/tmp/vl \
        --workdir=/tmp/pets_caption --config.data.data_dir=D
"""
from configs import common
from configs import finetune_common as F
from metalm_jax.data import formats

DATASET_KINDS = {"image": "caption", "audio": "audio_caption", "video": "video_caption"}
# modality -> (world source, zero-shot prompt)
MODALITIES = {"image": ("world_caption", formats.CAPTION_PROMPT),
              "audio": ("world_audio_caption", formats.AUDIO_CAPTION_PROMPT),
              "video": ("world_video_caption", formats.VIDEO_CAPTION_PROMPT)}

KNOBS = ("source", "examples", "beam")  # source; evaluated examples; beam size (1 = greedy)
SIZES = {
    "tiny": {"model": "tiny", "data": "tiny", "source": "world_caption", "examples": 64,
             "beam": 1, "batch_size": 16, "total_steps": 300, "optimizer.lr": 5e-4,
             "optimizer.warmup_steps": 20, "eval_loss.every_steps": 100,
             "checkpoint.every_steps": 100},
    "paper": {"model": "paper_vl", "data": "paper_vl", "source": "coco_caption",
              "examples": 5000, "beam": 3, "batch_size": 256, "total_steps": 20_000,
              "optimizer.lr": 1e-5, "optimizer.warmup_steps": 0,
              "eval_loss.every_steps": 2000, "checkpoint.every_steps": 2000},
}


def get_config(arg=None):
  a, s, fields = F.parse(arg, SIZES, KNOBS, modality="image", dataset="")
  n, beam = s.examples, s.beam
  if a.dataset:  # your own data set: the modality's zero-shot prompt, its validation split
    source = F.dataset_source(a, DATASET_KINDS)
    prompt = MODALITIES[a.modality][1]
  else:
    source, prompt = F.modality_choice(a, MODALITIES, (s.source, formats.CAPTION_PROMPT))
  c = F.base(a, s, fields, kind="vl", mixture={source + "_prompted": 1.0})
  every = c.eval_loss.every_steps
  c.data.spans.prefix_max = 0  # no caption prefix through the text encoder here
  if a.modality != "image":
    common.add_av_encoders(c.model)
  decoding = dict(method="beam", beam_size=beam) if beam > 1 else dict(method="greedy")
  split = "test" if a.size == "paper" and not a.dataset else "validation"
  c.evals = {
      "caption": F.evaluator("caption", source, every, prompt="caption:", split=split,
                             num_examples=n, max_new_tokens=32, **decoding),
      "zeroshot": F.evaluator("caption", source, every, prompt=prompt,
                              split=split, num_examples=n, max_new_tokens=32, **decoding),
  }
  return c
