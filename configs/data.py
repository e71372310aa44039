"""Data configs: `data_config(kind, size)` for kind "vl" / "lang" and the
model size presets of configs/common.py.

Fields:
  data_dir        where TFDS data sets live; the embedded world and its
                  tokenizer are prepared there on first use
                  (env METALM_DATA_DIR, else ~/.cache/metalm_jax/tfds)
  world           embedded world builder config: "tiny" (64 px) or "paper" (224 px)
  manual_dirs     {tfds name: folder of official files} for real data builders
                  (metalm_coco_karpathy, metalm_vqav2, metalm_text_corpus)
  mixture         {source name: weight}; sources in metalm_jax/data/sources.py
  seq_len         decoder row length
  tokenizer       SentencePiece model path; "" = the embedded one
  skip_corrupt_records   False: an unreadable record stops the run, naming the
                  data set, split, shard file and record; True: skipped and
                  counted (data/skipped_unreadable_record)
  num_workers     Grain worker processes; 0 = in-process
  read_threads / prefetch_buffer   per mixture entry: threads running the
                  per-example map and rows read ahead (memory: rows x row size)
  max_doc_tokens  documents are truncated beyond this (counted)
  spans           encoder: text encoder for language spans ("" = none);
                  min_len / max_len / ratio of language spans;
                  prefix_max: longest caption prefix sent to the text encoder
  image_mean / image_std   normalisation (CLIP)
"""
from __future__ import annotations

import os

import ml_collections as mlc

from metalm_jax.data.images import CLIP_MEAN, CLIP_STD

KINDS = ("vl", "lang")
# The real-data builders that read official files (metalm_jax/data/builders):
# each has a manual_dirs entry ("" = not given), so the documented override
# --config.data.manual_dirs.metalm_coco_karpathy=DIR works on the locked config.
MANUAL_DATASETS = ("metalm_coco_karpathy", "metalm_vqav2", "metalm_text_corpus")


def default_data_dir() -> str:
  return os.environ.get("METALM_DATA_DIR", os.path.join("~", ".cache", "metalm_jax", "tfds"))


# size -> (world, vl seq_len, lang seq_len, span encoder, span min, span max, prefix_max)
_SIZES = {
    "tiny": ("tiny", 64, 128, "text", 8, 16, 8),
    "bench": ("tiny", 128, 128, "", 8, 16, 0),
    "paper_vl": ("paper", 256, 1024, "", 64, 128, 0),
    "paper_lang": ("paper", 256, 2048, "text", 64, 128, 0),
}


def data_config(kind: str, size: str) -> mlc.ConfigDict:
  if kind not in KINDS:
    raise ValueError(f"kind={kind!r} is unknown; known: {KINDS}")
  if size not in _SIZES:
    raise ValueError(f"size={size!r} is unknown; known: {sorted(_SIZES)}")
  world, vl_len, lang_len, span_enc, smin, smax, prefix = _SIZES[size]
  if kind == "vl":
    # Image-text pairs mixed with text-only documents (paper); no VQA, so
    # VQA on the world stays zero-shot. Finetune configs add "world_vqa".
    mixture = {"world_caption": 0.7, "world_text": 0.3}
  else:
    mixture = {"world_text": 1.0}
  return mlc.ConfigDict(dict(
      data_dir=default_data_dir(),
      world=world,
      manual_dirs={name: "" for name in MANUAL_DATASETS},
      mixture=mixture,
      seq_len=vl_len if kind == "vl" else lang_len,
      tokenizer="",
      skip_corrupt_records=False,
      num_workers=0,
      read_threads=2,
      prefetch_buffer=32,
      max_doc_tokens=8 * (vl_len if kind == "vl" else lang_len),
      spans=dict(encoder=span_enc, min_len=smin, max_len=smax, ratio=0.25, prefix_max=prefix),
      image_mean=CLIP_MEAN,
      image_std=CLIP_STD,
  ))
