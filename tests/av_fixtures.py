"""Four-modality configs for data tests: presets.ENCODER_PRESETS with the
audio ("whisper") and video encoder presets, or, where those are not in this
tree yet, minimal ConfigDicts holding the fields of the batch contract
(metalm_jax/batch.py) that the data path reads."""
import contextlib

import pytest

from metalm_jax import presets


def _whisper(**kw):
  d = dict(type="whisper", max_items=1, sample_rate=16000, max_seconds=1.0, num_vectors=8,
           connector=presets.connector("linear"))
  d.update(kw)
  return presets.ConfigDict(d)


def _video(**kw):
  d = presets.vit().to_dict()
  d.update(type="video", frames=4, num_vectors=8)
  d.update(kw)
  return presets.ConfigDict(d)


@contextlib.contextmanager
def av_presets():
  """presets.ENCODER_PRESETS with "whisper" and "video" while inside."""
  have = dict(getattr(presets, "ENCODER_PRESETS", {"vit": presets.vit, "bert": presets.bert}))
  have.setdefault("whisper", _whisper)
  have.setdefault("video", _video)
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(presets, "ENCODER_PRESETS", have, raising=False)
    yield have


def av_test_config(data_dir, **data_overrides):
  """testing.test_config("vl", "tiny") with the four-modality model of
  configs/pretrain_av.py and its data mixture (presets.av_mixture)."""
  from configs import common
  from tests import world_config as testing
  cfg = testing.test_config("av", "tiny", data_dir, **data_overrides)
  with av_presets():
    common.add_av_encoders(cfg.model)
  return cfg
