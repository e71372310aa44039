"""Shared helpers for the evaluate tests (no tests here): a word-level fake
tokenizer and one tiny model, initialised once per pytest process."""
import functools

import jax
import pytest
import numpy as np

from metalm_jax.models import metalm
from tests.model_fixtures import small_model_cfg


class FakeTokenizer:
  """Word-level tokenizer over a fixed word list (ids from 5 up)."""
  pad, bos, eos, image_start, image_end = 0, 1, 2, 3, 4
  eod = eos  # `</s>`, as the SentencePiece tokenizer
  WORDS = ("question: answer: caption: a cat dog red blue sky is the what color yes no "
           "two 2 positive negative great awful film movie ok it was").split()

  def __init__(self):
    self.ids = {w: i + 5 for i, w in enumerate(self.WORDS)}
    self.words = {i: w for w, i in self.ids.items()}

  def encode(self, text):
    try:
      return [self.ids[w] for w in text.split()]
    except KeyError as e:
      raise ValueError(f"FakeTokenizer has no word {e.args[0]!r}") from None

  def decode(self, ids):
    return " ".join(self.words[i] for i in ids if i in self.words)


def image(cfg, value):
  s = cfg.encoders.vision.image_size
  return np.full((s, s, 3), value, np.float32)


@functools.lru_cache(maxsize=None)
def tiny_model():
  """(model, params) of tests.model_fixtures.small_model_cfg(), seed 1.
  Callers must not modify params in place."""
  model = metalm.build_model(small_model_cfg())
  params = metalm.init_variables(model, jax.random.key(1), 1, 8)["params"]
  return model, params


@pytest.fixture(autouse=True)
def full_float32_matmuls():
  """GPUs default to reduced-precision float32 matmuls (TF32-like), which
  moves log-probs by ~1e-3; the comparisons here are about float32 numerics."""
  with jax.default_matmul_precision("highest"):
    yield
