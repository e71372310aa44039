"""MSR-VTT video captions read from the official JSON and mp4 files.

manual_dir layout (as distributed):
    train_val_videodatainfo.json   {"videos": [{"video_id": "video0", "split":
                                   "train" | "validate", ...}], "sentences":
                                   [{"video_id": "video0", "caption": ...}, ...]}
    test_videodatainfo.json        the same for split "test" (optional)
    TrainValVideo/video0.mp4 ...   TestVideo/video7010.mp4 ...
(a video is also found in videos/all/, videos/ or manual_dir itself).
Splits: train, validation (MSR-VTT's "validate"), test. Records: video_id,
video (the mp4 bytes, decoded by the pipeline: media/video.py, where
unreadable or odd videos are counted), captions (20 per video in MSR-VTT). A
video whose file is missing is skipped at build time, counted and logged.
"""
from __future__ import annotations

import json
# Local by intent (os, open): a manual dir is a local input of TFDS preparation
# into the local data dir (data/prepare.py).
import os
from typing import Dict, List

import tensorflow_datasets as tfds
from absl import logging

from metalm_jax.data.builders import common

ANNOTATIONS = ("train_val_videodatainfo.json", "test_videodatainfo.json")
_SPLITS = {"train": "train", "validation": "validate", "test": "test"}
VIDEO_FOLDERS = ("TrainValVideo", "TestVideo", os.path.join("videos", "all"), "videos", "")


def read_annotations(root: str) -> Dict[str, List[dict]]:
  """{MSR-VTT split: [{"video_id", "captions"}] in file order}."""
  videos, captions = [], {}
  found = [name for name in ANNOTATIONS if os.path.isfile(os.path.join(root, name))]
  if not found:
    raise ValueError(f"{root}: none of {ANNOTATIONS} found")
  for name in found:
    with open(os.path.join(root, name)) as f:
      info = json.load(f)
    videos += info.get("videos", [])
    for s in info.get("sentences", []):
      captions.setdefault(s["video_id"], []).append(s["caption"].strip())
  out: Dict[str, List[dict]] = {}
  for v in videos:
    out.setdefault(v.get("split", ""), []).append(
        {"video_id": v["video_id"], "captions": captions.get(v["video_id"], [])})
  return out


class MetalmMsrvtt(tfds.core.GeneratorBasedBuilder):
  """MSR-VTT: 10k web video clips with 20 captions each."""

  VERSION = tfds.core.Version("1.0.0")
  MANUAL_DOWNLOAD_INSTRUCTIONS = ("Put train_val_videodatainfo.json (and "
                                  "test_videodatainfo.json), TrainValVideo/ and TestVideo/ "
                                  "in manual_dir.")

  def _info(self):
    return self.dataset_info_from_configs(features=tfds.features.FeaturesDict({
        "video_id": tfds.features.Text(),
        "video": common.encoded_file(),
        "captions": common.text_list(),
    }))

  def _split_generators(self, dl_manager):
    root = os.fspath(dl_manager.manual_dir)
    by_split = read_annotations(root)
    other = sorted(set(by_split) - set(_SPLITS.values()))
    if other:
      logging.warning("msrvtt: videos of unknown splits %s are not built (%d videos)", other,
                      sum(len(by_split[s]) for s in other))
    return {name: self._generate_examples(root, by_split[part])
            for name, part in _SPLITS.items() if by_split.get(part)}

  def _generate_examples(self, root, videos):
    missing = 0
    for v in videos:
      paths = [os.path.join(root, folder, v["video_id"] + ".mp4") for folder in VIDEO_FOLDERS]
      path = next((p for p in paths if os.path.isfile(p)), None)
      if path is None:
        missing += 1
        continue
      with open(path, "rb") as f:
        data = f.read()
      yield v["video_id"], {"video_id": v["video_id"], "video": data, "captions": v["captions"]}
    if missing:
      logging.warning("msrvtt: skipped %d videos whose mp4 file is missing", missing)
