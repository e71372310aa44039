"""A plain-text / JSONL pretraining corpus directory (Pile, OpenWebText style).

manual_dir layout: `train/` and optionally `validation/`, each holding
`*.txt` files (one document per file) and/or `*.jsonl` files (one JSON object
per line with a "text" field; Pile format). Files directly in manual_dir go
to train. Lines that are not valid JSON are skipped and logged with a count.
"""
from __future__ import annotations

import glob
import json
# Local by intent (os, open): a manual dir is a local input of TFDS preparation
# into the local data dir (data/prepare.py).
import os

import tensorflow_datasets as tfds
from absl import logging


def _files(root):
  return sorted(glob.glob(os.path.join(root, "*.txt")) + glob.glob(os.path.join(root, "*.jsonl")))


class MetalmTextCorpus(tfds.core.GeneratorBasedBuilder):
  """Documents from .txt / .jsonl files."""

  VERSION = tfds.core.Version("1.0.0")
  MANUAL_DOWNLOAD_INSTRUCTIONS = ("Put train/ (and validation/) folders of .txt/.jsonl in "
                                  "manual_dir.")

  def _info(self):
    return self.dataset_info_from_configs(features=tfds.features.FeaturesDict({
        "text": tfds.features.Text(), "source": tfds.features.Text()}))

  def _split_generators(self, dl_manager):
    root = os.fspath(dl_manager.manual_dir)
    splits = {"train": _files(root) + _files(os.path.join(root, "train"))}
    val = _files(os.path.join(root, "validation"))
    if val:
      splits["validation"] = val
    return {k: self._generate_examples(v) for k, v in splits.items()}

  def _generate_examples(self, files):
    bad = 0
    for path in files:
      name = os.path.basename(path)
      with open(path, encoding="utf-8", errors="replace") as f:
        if path.endswith(".txt"):
          yield name, {"text": f.read(), "source": name}
          continue
        for n, line in enumerate(f):
          if not line.strip():
            continue
          try:
            text = json.loads(line)["text"]
          except (ValueError, KeyError, TypeError):
            bad += 1
            continue
          yield f"{name}:{n}", {"text": str(text), "source": name}
    if bad:
      logging.warning("text_corpus: skipped %d JSONL lines without a 'text' field", bad)
