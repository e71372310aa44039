"""TFDS builder of the embedded world (`metalm_world/tiny`, `metalm_world/paper`).

Splits: train, validation, test_heldout (unseen colour-shape pairs). Each
record: id, image (PNG bytes), captions (3), questions with question_types and
answers [Q, 10], an NLI triple (premise, hypothesis, label), a multi-paragraph
document, the scene's objects as JSON, and an interleaved document
(world.interleaved: doc_ids, doc_images, doc_captions, doc_questions,
doc_answers; `doc_images` scenes of the same split, this one first), and the
scene's sound and video (world_av.av_record: audio WAV bytes with
audio_captions / audio_questions / audio_question_types / audio_answers;
video PNG frames with video_event, video_captions, video_questions,
video_question_types, video_answers), and a binding episode
(world.bind_episode: bind_images, bind_phrases, bind_labels).
"""
from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from metalm_jax.data import world as world_lib
from metalm_jax.data import world_av
from metalm_jax.data.builders import common


@dataclasses.dataclass
class WorldConfig(tfds.core.BuilderConfig):
  seed: int = 0
  image_size: int = 64
  num_train: int = 3000
  num_validation: int = 300
  num_test_heldout: int = 300
  doc_paragraphs: int = 3
  doc_images: int = 4  # images of each interleaved document


class MetalmWorld(tfds.core.GeneratorBasedBuilder):
  """Procedurally generated scenes with captions, VQA, NLI and documents."""

  VERSION = tfds.core.Version("1.4.0")
  RELEASE_NOTES = {"1.1.0": "interleaved documents (doc_* fields)",
                   "1.2.0": "sound and motion (audio_* and video_* fields)",
                   "1.3.0": "NLI labels need premise and hypothesis together (premises "
                            "with 'only', every hypothesis template with every label); "
                            "captions and documents redrawn, images unchanged",
                   "1.4.0": "binding episodes (bind_* fields); documents hold true "
                            "sentences with true / false / neither / only / question / "
                            "answer; 'which object moved?' balanced (asked of a quarter of "
                            "the videos without a move); images unchanged"}
  BUILDER_CONFIGS = [
      WorldConfig(name="tiny", description="64 px, 3.6k scenes, short documents"),
      WorldConfig(name="paper", description="224 px, 22k scenes, long documents",
                  image_size=224, num_train=20000, num_validation=1000, num_test_heldout=1000,
                  doc_paragraphs=12),
      WorldConfig(name="test", description="64 px, a few scenes, for unit tests",
                  num_train=64, num_validation=16, num_test_heldout=16),
  ]

  def _info(self):
    return self.dataset_info_from_configs(features=tfds.features.FeaturesDict({
        "id": np.int64,
        "image": common.encoded_image(),
        "captions": common.text_list(),
        "questions": common.text_list(),
        "question_types": common.text_list(),
        "answers": tfds.features.Tensor(shape=(None, 10), dtype=np.object_),
        "premise": tfds.features.Text(),
        "hypothesis": tfds.features.Text(),
        "label": tfds.features.ClassLabel(names=list(world_lib.NLI_LABELS)),
        "document": tfds.features.Text(),
        "objects": tfds.features.Text(),
        "doc_ids": tfds.features.Tensor(shape=(None,), dtype=np.int64),
        "doc_images": tfds.features.Tensor(shape=(None,), dtype=np.object_),
        "doc_captions": tfds.features.Tensor(shape=(None, 3), dtype=np.object_),
        "doc_questions": common.text_list(),
        "doc_answers": tfds.features.Tensor(shape=(None, 10), dtype=np.object_),
        "audio": tfds.features.Tensor(shape=(), dtype=np.object_),  # WAV bytes
        "audio_captions": common.text_list(),
        "audio_questions": common.text_list(),
        "audio_question_types": common.text_list(),
        "audio_answers": tfds.features.Tensor(shape=(None, 10), dtype=np.object_),
        "video": tfds.features.Tensor(shape=(None,), dtype=np.object_),  # PNG frames
        "video_event": tfds.features.Text(),
        "video_captions": common.text_list(),
        "video_questions": common.text_list(),
        "video_question_types": common.text_list(),
        "video_answers": tfds.features.Tensor(shape=(None, 10), dtype=np.object_),
        "bind_images": tfds.features.Tensor(shape=(None,), dtype=np.object_),  # PNG bytes
        "bind_phrases": common.text_list(),
        "bind_labels": tfds.features.Tensor(shape=(None,), dtype=np.int64),
    }))

  def _split_generators(self, dl_manager):
    del dl_manager
    c = self.builder_config
    counts = {"train": c.num_train, "validation": c.num_validation,
              "test_heldout": c.num_test_heldout}
    return {split: self._generate_examples(split, n) for split, n in counts.items()}

  def _generate_examples(self, split, n):
    c = self.builder_config
    for i in range(n):
      rec = world_lib.scene_record(c.seed, split, i, c.image_size, c.doc_paragraphs)
      rec.update(world_lib.interleaved(c.seed, split, i, n, min(c.doc_images, n), c.image_size))
      rec.update(world_av.av_record(c.seed, split, i, c.image_size))
      rec.update(world_lib.bind_episode(c.seed, split, i, c.image_size))
      yield i, rec
