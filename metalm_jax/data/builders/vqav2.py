"""VQAv2 read from the official question / annotation JSON and COCO images.

manual_dir layout (as distributed):
    v2_OpenEnded_mscoco_{train,val}2014_questions.json
    v2_mscoco_{train,val}2014_annotations.json
    {train,val}2014/COCO_{train,val}2014_<image_id:012d>.jpg
Splits: train, validation. Each record is one question with its 10 answers.
"""
from __future__ import annotations

import json
# Local by intent (os, open): a manual dir is a local input of TFDS preparation
# into the local data dir (data/prepare.py).
import os

import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from metalm_jax.data.builders import common

_SPLITS = {"train": "train2014", "validation": "val2014"}


class MetalmVqav2(tfds.core.GeneratorBasedBuilder):
  """VQAv2 questions with 10 human answers each."""

  VERSION = tfds.core.Version("1.0.0")
  MANUAL_DOWNLOAD_INSTRUCTIONS = ("Put the VQAv2 question/annotation JSON and COCO images in "
                                  "manual_dir.")

  def _info(self):
    return self.dataset_info_from_configs(features=tfds.features.FeaturesDict({
        "question_id": np.int64,
        "image_id": np.int64,
        "image": common.encoded_image(),
        "question": tfds.features.Text(),
        "answers": common.text_list(),
        "answer_type": tfds.features.Text(),
        "multiple_choice_answer": tfds.features.Text(),
    }))

  def _split_generators(self, dl_manager):
    root = os.fspath(dl_manager.manual_dir)
    return {name: self._generate_examples(root, sub) for name, sub in _SPLITS.items()
            if os.path.exists(os.path.join(root, f"v2_mscoco_{sub}_annotations.json"))}

  def _generate_examples(self, root, sub):
    with open(os.path.join(root, f"v2_OpenEnded_mscoco_{sub}_questions.json")) as f:
      questions = {q["question_id"]: q for q in json.load(f)["questions"]}
    with open(os.path.join(root, f"v2_mscoco_{sub}_annotations.json")) as f:
      annotations = json.load(f)["annotations"]
    missing = 0
    for a in annotations:
      q = questions[a["question_id"]]
      path = os.path.join(root, sub, f"COCO_{sub}_{a['image_id']:012d}.jpg")
      if not os.path.exists(path):
        missing += 1
        continue
      with open(path, "rb") as f:
        data = f.read()
      yield int(a["question_id"]), {
          "question_id": int(a["question_id"]), "image_id": int(a["image_id"]), "image": data,
          "question": q["question"], "answers": [x["answer"] for x in a["answers"]],
          "answer_type": a.get("answer_type", ""),
          "multiple_choice_answer": a.get("multiple_choice_answer", "")}
    if missing:
      logging.warning("vqav2 %s: skipped %d questions whose image file is missing", sub, missing)
