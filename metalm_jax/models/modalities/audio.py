"""Sound clips: a Whisper-shaped encoder (encoder type "whisper"), pooled to
`num_vectors` docked vectors per clip."""
from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from metalm_jax import presets
from metalm_jax.media import audio as audio_lib
from metalm_jax.models import audio as audio_model
from metalm_jax.models.modalities import base

_ENCODED = (bytes, bytearray, memoryview, np.bytes_)  # file contents


class AudioItems(nn.Module):
  """Clips [B, N, S] -> [B, N, num_vectors, width]: the Whisper-shaped encoder,
  pooled (`cfg.pool`). Invalid items (valid False) are encoded as silence and
  their vectors zeroed, so whatever their samples hold (NaN included) reaches
  neither the outputs nor the gradients."""
  cfg: Any
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, inputs, deterministic=True):
    wave, valid = base.valid_only(inputs["waveform"], inputs), inputs["valid"]  # [B, N, S], [B, N]
    b, n, s = wave.shape
    out = audio_model.AudioEncoder(self.cfg, self.dtype, name="whisper")(
        wave.reshape(b * n, s), deterministic)
    out = audio_model.pool(out, self.cfg.num_vectors, self.cfg.pool)
    out = out.reshape((b, n) + out.shape[1:])
    return jnp.where(valid[..., None, None], out, jnp.zeros((), out.dtype))


def inputs(cfg, b):
  """waveform float32 [B, N, S] (mono at cfg.sample_rate Hz, S = max_seconds *
  sample_rate, zero-padded), valid bool [B, N]."""
  samples = int(round(cfg.max_seconds * cfg.sample_rate))
  return {"waveform": ((b, cfg.max_items, samples), np.float32),
          "valid": ((b, cfg.max_items), np.bool_)}


def num_vectors(cfg) -> int:
  """Audio and video dock a configured number of vectors per clip."""
  if cfg.num_vectors < 1:
    raise ValueError(f"{cfg.type} encoder num_vectors={cfg.num_vectors} must be >= 1")
  return cfg.num_vectors


def load(value, enc_cfg, norm, stats) -> Optional[np.ndarray]:
  """Encoded bytes (WAV / FLAC / OGG / MP3), (samples, rate) or a float
  waveform at the encoder's rate -> float32 [max_seconds * sample_rate]
  (media/audio.py decode_audio: downmix, resample, cut, zero-pad), or None
  (counted)."""
  del norm
  rate = int(enc_cfg.sample_rate)
  if not isinstance(value, _ENCODED + (tuple,)):
    value = (value, rate)
  try:
    wave, counts = audio_lib.decode_audio(value, sample_rate=rate,
                                          max_seconds=float(enc_cfg.max_seconds))
  except (TypeError, ValueError):  # samples that are not numbers
    wave, counts = None, {"skipped_bad_audio": 1}
  base.merge_counts(stats, counts)
  return wave


AUDIO = base.register(base.Modality(
    name="audio", encoder_type="whisper", encoder=AudioItems, preset=presets.whisper,
    inputs=inputs, slot_length=num_vectors, key="waveform",
    brackets=("audio_start", "audio_end"), load=load))
