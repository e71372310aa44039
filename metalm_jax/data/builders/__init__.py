"""TFDS builders (array_record, no TensorFlow needed): the embedded world,
readers for the official files of COCO Karpathy captions, VQAv2, a plain
text / JSONL corpus, audio captions (Clotho / AudioCaps layout) and MSR-VTT
video captions, and your own data from JSONL manifests (jsonl.py). Importing
this package registers them with tfds.

Images, audio and video are stored as their encoded file bytes (a scalar
object Tensor); the pipeline decodes them (`metalm_jax.media.images`, `.audio`,
`.video`), so a corrupt or odd file is handled there, with a counter, instead
of failing a build or a read.
"""
from metalm_jax.data.builders import (  # noqa: F401
    audio_captions, coco_karpathy, jsonl, msrvtt, text_corpus, vqav2, world)
