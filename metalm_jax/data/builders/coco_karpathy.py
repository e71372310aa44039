"""COCO captions with the Karpathy split, read from the official files.

manual_dir layout (as distributed):
    dataset_coco.json          Karpathy split: {"images": [{"filepath",
                               "filename", "split", "cocoid", "sentences":
                               [{"raw": ...}, ...]}, ...]}
    train2014/*.jpg, val2014/*.jpg
Splits: train (train + restval), validation (val), test (test). An image
file that is missing is skipped at build time and logged with a count.
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

_SPLITS = {"train": ("train", "restval"), "validation": ("val",), "test": ("test",)}


class MetalmCocoKarpathy(tfds.core.GeneratorBasedBuilder):
  """COCO 2014 images with 5 captions each, Karpathy splits."""

  VERSION = tfds.core.Version("1.0.0")
  MANUAL_DOWNLOAD_INSTRUCTIONS = "Put dataset_coco.json, train2014/ and val2014/ in manual_dir."

  def _info(self):
    return self.dataset_info_from_configs(features=tfds.features.FeaturesDict({
        "image_id": np.int64,
        "filename": tfds.features.Text(),
        "image": common.encoded_image(),
        "captions": common.text_list(),
    }))

  def _split_generators(self, dl_manager):
    root = os.fspath(dl_manager.manual_dir)
    with open(os.path.join(root, "dataset_coco.json")) as f:
      images = json.load(f)["images"]
    return {name: self._generate_examples(root, [im for im in images if im["split"] in parts])
            for name, parts in _SPLITS.items()}

  def _generate_examples(self, root, images):
    missing = 0
    for im in images:
      path = os.path.join(root, im.get("filepath", ""), im["filename"])
      if not os.path.exists(path):
        missing += 1
        continue
      with open(path, "rb") as f:
        data = f.read()
      yield int(im["cocoid"]), {
          "image_id": int(im["cocoid"]), "filename": im["filename"], "image": data,
          "captions": [s["raw"].strip() for s in im["sentences"]]}
    if missing:
      logging.warning("coco_karpathy: skipped %d entries whose image file is missing", missing)
