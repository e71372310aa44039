"""Audio captions read from audio files and captions CSVs (Clotho / AudioCaps
layouts).

manual_dir layout: per split a CSV with a header row and an audio folder,
the first pair whose CSV exists is used:
    train        train.csv + train/        or clotho_captions_development.csv + development/
    validation   val.csv + val/            or validation.csv + validation/
                 or clotho_captions_validation.csv + validation/
    test         test.csv + test/          or clotho_captions_evaluation.csv + evaluation/
CSV columns: the audio file is the first of `file_name`, `filename`, `file`,
`path`, `youtube_id`, `audiocap_id` present (a value without an extension
gets .wav, .flac, .ogg or .mp3, whichever exists); captions are `caption`
and/or `caption_1`, `caption_2`, ... (Clotho: five per row; AudioCaps: one
per row, rows of the same file are merged). A file is looked up in the
split's audio folder, then in manual_dir itself.

Records: clip_id (the CSV's file value), audio (the file's bytes, decoded by
the pipeline: media/audio.py, where corrupt or odd audio is counted), captions.
A CSV row whose file is missing is skipped at build time, counted and logged;
a split without a CSV is not built.
"""
from __future__ import annotations

import csv
# Local by intent (os, open): a manual dir is a local input of TFDS preparation
# into the local data dir (data/prepare.py).
import os
from typing import Dict, List, Optional

import tensorflow_datasets as tfds
from absl import logging

from metalm_jax.data.builders import common

_SPLITS = {
    "train": (("train.csv", "train"), ("clotho_captions_development.csv", "development")),
    "validation": (("val.csv", "val"), ("validation.csv", "validation"),
                   ("clotho_captions_validation.csv", "validation")),
    "test": (("test.csv", "test"), ("clotho_captions_evaluation.csv", "evaluation")),
}
FILE_COLUMNS = ("file_name", "filename", "file", "path", "youtube_id", "audiocap_id")
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3")


def caption_columns(header: List[str]) -> List[str]:
  return [c for c in header if c == "caption" or (c.startswith("caption_") and
                                                  c[len("caption_"):].isdigit())]


def find_audio(folders: List[str], value: str) -> Optional[str]:
  names = [value] if os.path.splitext(value)[1].lower() in AUDIO_EXTENSIONS else [
      value + ext for ext in AUDIO_EXTENSIONS]
  for folder in folders:
    for name in names:
      path = os.path.join(folder, name)
      if os.path.isfile(path):
        return path
  return None


def read_captions(csv_path: str) -> Dict[str, List[str]]:
  """{file value: captions} in CSV order; raises naming the CSV if it has no
  file or caption column."""
  with open(csv_path, newline="", encoding="utf-8-sig") as f:
    reader = csv.DictReader(f)
    header = [h.strip() for h in (reader.fieldnames or [])]
    reader.fieldnames = header
    file_col = next((c for c in FILE_COLUMNS if c in header), None)
    caps = caption_columns(header)
    if file_col is None or not caps:
      raise ValueError(f"{csv_path}: header {header} needs one of {FILE_COLUMNS} and a "
                       f"'caption' or 'caption_<n>' column")
    out: Dict[str, List[str]] = {}
    for row in reader:
      value = (row.get(file_col) or "").strip()
      if value:
        out.setdefault(value, []).extend((row.get(c) or "").strip() for c in caps)
  return out


class MetalmAudioCaptions(tfds.core.GeneratorBasedBuilder):
  """Audio clips with their captions (Clotho, AudioCaps or the same layout)."""

  VERSION = tfds.core.Version("1.0.0")
  MANUAL_DOWNLOAD_INSTRUCTIONS = ("Put the captions CSVs and audio folders in manual_dir "
                                  "(metalm_jax/data/builders/audio_captions.py).")

  def _info(self):
    return self.dataset_info_from_configs(features=tfds.features.FeaturesDict({
        "clip_id": tfds.features.Text(),
        "audio": common.encoded_file(),
        "captions": common.text_list(),
    }))

  def _split_generators(self, dl_manager):
    root = os.fspath(dl_manager.manual_dir)
    out = {}
    for split, layouts in _SPLITS.items():
      for csv_name, folder in layouts:
        if os.path.isfile(os.path.join(root, csv_name)):
          out[split] = self._generate_examples(root, csv_name, folder)
          break
    if not out:
      raise ValueError(f"{root}: no captions CSV found; expected one of "
                       f"{sorted(c for layouts in _SPLITS.values() for c, _ in layouts)}")
    return out

  def _generate_examples(self, root, csv_name, folder):
    missing = 0
    for value, captions in read_captions(os.path.join(root, csv_name)).items():
      path = find_audio([os.path.join(root, folder), root], value)
      if path is None:
        missing += 1
        continue
      with open(path, "rb") as f:
        data = f.read()
      yield value, {"clip_id": value, "audio": data, "captions": captions}
    if missing:
      logging.warning("audio_captions: %s: skipped %d rows whose audio file is missing",
                      csv_name, missing)
