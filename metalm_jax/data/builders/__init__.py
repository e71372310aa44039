"""TFDS builders (array_record, no TensorFlow needed): the embedded world and
readers for the official files of COCO Karpathy captions, VQAv2 and a plain
text / JSONL corpus. Importing this package registers them with tfds.

Images are stored as their encoded file bytes (a scalar object Tensor); the
pipeline decodes them (`metalm_jax.data.images`), so a corrupt or odd image is
handled there, with a counter, instead of failing a build or a read.
"""
from metalm_jax.data.builders import coco_karpathy, text_corpus, vqav2, world  # noqa: F401
