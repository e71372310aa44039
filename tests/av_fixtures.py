"""Four-modality configs for data tests: the tiny test-world config with
the audio ("whisper") and video encoders of configs/pretrain_av.py."""


def av_test_config(data_dir, **data_overrides):
  """testing.test_config("vl", "tiny") with the four-modality model of
  configs/pretrain_av.py and its data mixture (presets.av_mixture)."""
  from configs import common
  from tests import world_config as testing
  cfg = testing.test_config("av", "tiny", data_dir, **data_overrides)
  common.add_av_encoders(cfg.model)
  return cfg
