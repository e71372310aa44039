"""Audio decoding: encoded file bytes -> the waveform an audio encoder reads.

`decode_audio(data, sample_rate=, max_seconds=)` turns WAV / FLAC / OGG
(Vorbis, Opus) / MP3 bytes (libsndfile through `soundfile`) into the batch
contract's clip (metalm_jax/batch.py, type "whisper"): float32 [S], mono, at
`sample_rate` Hz, S = round(max_seconds * sample_rate), zero-padded. On the way:

  - several channels are averaged to mono         (counted converted_audio_channels)
  - another rate is resampled, polyphase with a    (counted resampled_audio)
    Kaiser-windowed sinc low-pass (scipy's
    resample_poly); a rate ratio whose reduced
    fraction has terms over MAX_RATIO_TERM is
    rounded to the nearest fraction that fits
    (16001 Hz is read as 16000 Hz: 6e-5 pitch)
  - a clip longer than max_seconds is cut to it    (counted truncated_audio)
  - undecodable, truncated, empty or non-finite    (counted skipped_bad_audio)
    data gives None; a WAV whose data chunk is
    cut short counts as truncated (libsndfile
    would silently read the part that is there)
  - silence, a peak |x| below `silence_peak`       (counted skipped_silent_audio)
    (SILENCE_PEAK = 1e-4, -80 dBFS: 16-bit files
    within +-3 steps of zero) gives None

Samples are not rescaled: integer files come back in [-1, 1), float files as
stored. `(samples, rate)` (an array [n] or [n, channels]) goes through the same
steps with `prepare_waveform`.
"""
from __future__ import annotations

import fractions
import io
import struct
from typing import Dict, Optional, Tuple

import numpy as np
from absl import logging

# The counters this module reports (the pipeline's `stats`, logged as data/*).
STAT_KEYS = ("skipped_bad_audio", "skipped_silent_audio", "converted_audio_channels",
             "resampled_audio", "truncated_audio")
SILENCE_PEAK = 1e-4
MAX_RATIO_TERM = 1000  # up/down factors of the polyphase resampler stay <= this


def clip_samples(sample_rate: int, max_seconds: float) -> int:
  """S of the batch contract."""
  return int(round(max_seconds * sample_rate))


WAV_SLACK = 16  # bytes a data chunk may miss (writers that count a pad byte or frame too many)


def wav_is_truncated(data: bytes) -> bool:
  """True if `data` is a RIFF/WAVE file whose `data` chunk declares more than
  WAV_SLACK bytes beyond the end of the file (a size of 0 or 0xFFFFFFFF means
  'unknown', as written by streaming encoders, and is not a truncation)."""
  if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
    return False
  offset = 12
  while offset + 8 <= len(data):
    chunk, size = data[offset:offset + 4], struct.unpack("<I", data[offset + 4:offset + 8])[0]
    if chunk == b"data":
      return size not in (0, 0xFFFFFFFF) and offset + 8 + size > len(data) + WAV_SLACK
    offset += 8 + size + (size & 1)
  return True  # the header ends before any data chunk


def read_audio(data: bytes) -> Tuple[np.ndarray, int]:
  """Encoded bytes -> (float64 [n, channels], rate). Raises ValueError naming
  what is wrong with them."""
  import soundfile  # core dependency; imported here as only the audio path needs it
  if not isinstance(data, (bytes, bytearray, memoryview, np.bytes_)):
    raise ValueError(f"audio data must be encoded file bytes, got {type(data).__name__}")
  data = bytes(data)
  if not data:
    raise ValueError("audio data is empty")
  if wav_is_truncated(data):
    raise ValueError("WAV data chunk is cut short (truncated file)")
  try:
    samples, rate = soundfile.read(io.BytesIO(data), dtype="float64", always_2d=True)
  except Exception as e:  # libsndfile reports corrupt data with several types
    raise ValueError(f"undecodable audio ({type(e).__name__}: {e})") from None
  return samples, int(rate)


def rate_ratio(rate_in: int, rate_out: int) -> Tuple[int, int]:
  """(up, down) with up / down = rate_out / rate_in, both <= MAX_RATIO_TERM."""
  if rate_in <= 0 or rate_out <= 0:
    raise ValueError(f"sample rates must be > 0, got {rate_in} -> {rate_out}")
  r = fractions.Fraction(rate_out, rate_in)
  if max(r.numerator, r.denominator) > MAX_RATIO_TERM:
    r = r.limit_denominator(MAX_RATIO_TERM)
  if r.numerator > MAX_RATIO_TERM:
    raise ValueError(f"sample rate {rate_in} Hz is too low to resample to {rate_out} Hz")
  return r.numerator, r.denominator


def resample(x: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
  """1-D float64 signal at `rate_in` -> `rate_out` (polyphase FIR, Kaiser
  window beta 5, scipy's default filter); length ceil(n * up / down)."""
  from scipy import signal
  up, down = rate_ratio(rate_in, rate_out)
  if up == down:
    return np.asarray(x, np.float64)
  return signal.resample_poly(np.asarray(x, np.float64), up, down)


def prepare_waveform(samples, rate: int, *, sample_rate: int, max_seconds: float,
                     silence_peak: float = SILENCE_PEAK
                     ) -> Tuple[Optional[np.ndarray], Dict[str, int]]:
  """(samples [n] or [n, channels], rate) -> (float32 [S] or None, counts);
  see the module docstring."""
  counts: Dict[str, int] = {}
  x = np.asarray(samples, np.float64)
  if x.ndim == 1:
    x = x[:, None]
  if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0 or not np.isfinite(x).all():
    return None, {"skipped_bad_audio": 1}
  try:
    up, down = rate_ratio(rate, sample_rate)
  except ValueError:
    return None, {"skipped_bad_audio": 1}
  if x.shape[1] > 1:
    counts["converted_audio_channels"] = 1
  x = x.mean(axis=1)
  size = clip_samples(sample_rate, max_seconds)
  if x.shape[0] > round(max_seconds * rate):
    counts["truncated_audio"] = 1
    # Cut at the input rate, with room for the resampling filter's half
    # length (10 * max(up, down) taps at the up-sampled rate), so a long file
    # costs what max_seconds of it costs.
    x = x[:int(np.ceil(max_seconds * rate)) + 2 + 10 * -(-max(up, down) // up)]
  if up != down:
    counts["resampled_audio"] = 1
    x = resample(x, rate, sample_rate)
  x = x[:size]
  if np.max(np.abs(x)) < silence_peak:
    counts["skipped_silent_audio"] = 1
    return None, counts
  out = np.zeros(size, np.float32)
  out[:x.shape[0]] = x
  return out, counts


def decode_audio(data, *, sample_rate: int, max_seconds: float,
                 silence_peak: float = SILENCE_PEAK
                 ) -> Tuple[Optional[np.ndarray], Dict[str, int]]:
  """Encoded audio bytes, or (samples, rate), -> (float32 [S] or None, counts)."""
  if isinstance(data, tuple):
    samples, rate = data
  else:
    try:
      samples, rate = read_audio(data)
    except ValueError as e:
      logging.log_every_n_seconds(logging.WARNING, "skipped an audio clip: %s "
                                  "(counted skipped_bad_audio)", 10, e)
      return None, {"skipped_bad_audio": 1}
  wave, counts = prepare_waveform(samples, int(rate), sample_rate=sample_rate,
                                  max_seconds=max_seconds, silence_peak=silence_peak)
  if wave is None:
    logging.log_every_n_seconds(logging.WARNING, "skipped an audio clip (counted %s)", 10,
                                ", ".join(k for k in counts if k.startswith("skipped")))
  return wave, counts
