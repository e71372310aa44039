"""Whisper's log-mel frontend in JAX (takes jax or numpy waveforms).

From mono waveforms [..., S] at `sample_rate` Hz to features [..., S // hop, n_mels]:

  frames  centred STFT: the waveform is reflect-padded by n_fft // 2 on each
          side and frame i covers padded samples [i * hop, i * hop + n_fft);
          S // hop frames are kept (Whisper drops the STFT's last frame)
  window  periodic Hann of n_fft samples
  power   |DFT|^2 over the 1 + n_fft // 2 non-negative frequencies
  mel     triangular filters on the Slaney mel scale (linear below 1 kHz,
          logarithmic above), 0 Hz to sample_rate / 2, each filter scaled to
          unit area (Slaney normalisation: 2 / its width in Hz)
  log     log10(max(mel, 1e-10)), floored at (max over the clip - 8),
          then (x + 4) / 4

The DFT is a matmul with a fixed cos/sin matrix at HIGHEST precision (float32
on every backend, MXU-friendly on TPU). Each clip is normalised by its own
maximum, so clips in a batch do not affect each other.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

LOG_FLOOR = 1e-10   # clamp before log10
DYNAMIC_RANGE = 8.0  # log10 units kept below the clip's maximum

# Slaney mel scale: linear (200/3 Hz per mel) below 1 kHz, log-spaced above
# with 27 mels per factor 6.4.
_F_SP = 200.0 / 3.0
_MIN_LOG_HZ = 1000.0
_MIN_LOG_MEL = _MIN_LOG_HZ / _F_SP
_LOGSTEP = np.log(6.4) / 27.0


def hz_to_mel(f):
  f = np.asarray(f, np.float64)
  log_part = _MIN_LOG_MEL + np.log(np.maximum(f, _MIN_LOG_HZ) / _MIN_LOG_HZ) / _LOGSTEP
  return np.where(f >= _MIN_LOG_HZ, log_part, f / _F_SP)


def mel_to_hz(m):
  m = np.asarray(m, np.float64)
  log_part = _MIN_LOG_HZ * np.exp(_LOGSTEP * (np.maximum(m, _MIN_LOG_MEL) - _MIN_LOG_MEL))
  return np.where(m >= _MIN_LOG_MEL, log_part, _F_SP * m)


@functools.lru_cache(maxsize=16)
def mel_filters(sample_rate: int, n_fft: int, n_mels: int) -> np.ndarray:
  """[1 + n_fft // 2, n_mels] float64 Slaney filters (area-normalised)."""
  fft_hz = np.linspace(0.0, sample_rate / 2.0, 1 + n_fft // 2)
  edges = mel_to_hz(np.linspace(hz_to_mel(0.0), hz_to_mel(sample_rate / 2.0), n_mels + 2))
  lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
  rise = (fft_hz[None] - lo) / (mid - lo)
  fall = (hi - fft_hz[None]) / (hi - mid)
  tri = np.maximum(0.0, np.minimum(rise, fall))  # [n_mels, bins]
  return (tri * (2.0 / (hi - lo))).T


@functools.lru_cache(maxsize=16)
def dft_matrix(n_fft: int) -> np.ndarray:
  """[n_fft, 2 * bins] float64: periodic-Hann-windowed cos | -sin DFT columns."""
  n = np.arange(n_fft)
  window = 0.5 - 0.5 * np.cos(2.0 * np.pi * n / n_fft)
  ang = 2.0 * np.pi * np.outer(n, np.arange(1 + n_fft // 2)) / n_fft
  return np.concatenate([np.cos(ang), -np.sin(ang)], axis=1) * window[:, None]


def num_frames(num_samples: int, hop_length: int) -> int:
  return num_samples // hop_length


def check_settings(num_samples: int, sample_rate: int, n_fft: int, hop_length: int,
                   n_mels: int) -> None:
  """Raises ValueError naming the setting that cannot work."""
  for name, v in (("sample_rate", sample_rate), ("n_fft", n_fft), ("hop_length", hop_length),
                  ("num_mel_bins", n_mels)):
    if not isinstance(v, (int, np.integer)) or v < 1:
      raise ValueError(f"audio {name}={v!r} must be a positive int")
  if num_samples <= n_fft // 2:
    raise ValueError(f"audio clips of {num_samples} samples are too short for the reflect "
                     f"padding of n_fft={n_fft} (need > {n_fft // 2})")
  if num_samples < hop_length:
    raise ValueError(f"audio clips of {num_samples} samples give no frame at "
                     f"hop_length={hop_length}")


def log_mel(waveform, sample_rate: int = 16000, n_fft: int = 400, hop_length: int = 160,
            n_mels: int = 80):
  """Whisper log-mel features [..., S // hop_length, n_mels] float32 of
  waveforms [..., S] (module docstring for the definition)."""
  x = jnp.asarray(waveform, jnp.float32)
  s = x.shape[-1]
  check_settings(s, sample_rate, n_fft, hop_length, n_mels)
  pad = n_fft // 2
  x = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(pad, pad)], mode="reflect")
  t = num_frames(s, hop_length)
  idx = np.arange(t)[:, None] * hop_length + np.arange(n_fft)[None, :]
  frames = x[..., idx]  # [..., T, n_fft]
  hi = jax.lax.Precision.HIGHEST
  spec = jnp.matmul(frames, jnp.asarray(dft_matrix(n_fft), jnp.float32), precision=hi)
  bins = 1 + n_fft // 2
  power = jnp.square(spec[..., :bins]) + jnp.square(spec[..., bins:])
  mel = jnp.matmul(power, jnp.asarray(mel_filters(sample_rate, n_fft, n_mels), jnp.float32),
                   precision=hi)
  logs = jnp.log10(jnp.maximum(mel, LOG_FLOOR))
  top = jnp.max(logs, axis=(-2, -1), keepdims=True)
  logs = jnp.maximum(logs, top - DYNAMIC_RANGE)
  return (logs + 4.0) / 4.0
