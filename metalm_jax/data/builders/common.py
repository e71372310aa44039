"""Feature helpers shared by the builders."""
import numpy as np
import tensorflow_datasets as tfds


def encoded_image() -> tfds.features.Tensor:
  """Encoded image file bytes (PNG/JPEG/...), decoded by the pipeline."""
  return encoded_file()


def encoded_file() -> tfds.features.Tensor:
  """An encoded file's bytes (image, audio, video), decoded by the pipeline
  (media/images.py, media/audio.py, media/video.py)."""
  return tfds.features.Tensor(shape=(), dtype=np.object_)


def text_list() -> tfds.features.Sequence:
  return tfds.features.Sequence(tfds.features.Text())


def as_str(value) -> str:
  """tfds Text comes back as bytes from real files and str from mock_data."""
  return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)
