"""Docked media kinds: what an image, a sound clip or a video becomes in a row.

Registry `MEDIA`: kind name -> `Media`: the encoder type that docks it, the
batch input array it fills (metalm_jax/batch.py), the tokenizer attributes of
its brackets (`<image>` ... `</image>`, `<audio>` ... `</audio>`, `<video>`
... `</video>`), and `load(value, enc_cfg, norm, stats)` -> the encoder's
input for one item (float32, the contract's per-item shape) or None when the
value is unusable (counted in `stats`).

Loaders (shared by the pipeline's tasks and the evaluators' prompts, so an
evaluated clip goes through exactly the training steps):
  image  images.to_rgb + images.preprocess_image (CLIP normalisation);
  audio  16-bit PCM WAV bytes (the embedded world writes them; general
         files: data/audio.py) or a float waveform at the encoder's
         sample_rate; stereo is averaged to mono; zero-padded, or cut to
         max_seconds (counted `truncated_audio`); unreadable bytes or another
         sample rate: `skipped_bad_audio`;
  video  a sequence of encoded frames (the world's PNGs) or an array
         [F, H, W, 3]; each frame as an image; a clip of another frame count
         is sampled uniformly in time to cfg.frames (counted
         `resampled_video_frames`); no frames or an unreadable frame:
         `skipped_bad_video`.
"""
from __future__ import annotations

import dataclasses
import io
import wave
from typing import Any, Callable, Optional

import numpy as np

from metalm_jax.data import images as images_lib
from metalm_jax.registry import Registry

MEDIA = Registry("media kind")

# Counters the loaders add to a task's stats (tasks.STAT_KEYS holds them).
STAT_KEYS = ("skipped_bad_audio", "truncated_audio", "skipped_bad_video",
             "resampled_video_frames")


@dataclasses.dataclass(frozen=True)
class Media:
  name: str          # kind: "image" | "audio" | "video"
  encoder_type: str  # the encoder type that docks it (batch.MODALITIES)
  key: str           # the encoder's input array, next to `valid`
  open: str          # tokenizer attribute of the opening bracket
  close: str         # ... and of the closing one
  load: Callable[[Any, Any, Any, dict], Optional[np.ndarray]]


def _count(stats: dict, key: str, n: int = 1) -> None:
  stats[key] = stats.get(key, 0) + n


def load_image(value, enc_cfg, norm, stats) -> Optional[np.ndarray]:
  """Encoded bytes / PIL / array -> float32 [S, S, 3]; `norm` = (mean, std)."""
  rgb, counts = images_lib.to_rgb(value)
  for k, v in counts.items():
    _count(stats, k, v)
  if rgb is None:
    return None
  if rgb.shape[0] != rgb.shape[1]:
    _count(stats, "resized_nonsquare_image")
  return images_lib.preprocess_image(rgb, enc_cfg.image_size, *norm)


def decode_wav(data: bytes) -> tuple:
  """PCM WAV bytes -> (float64 [samples, channels] in [-1, 1], sample rate).
  Raises ValueError for what it cannot read."""
  try:
    with wave.open(io.BytesIO(bytes(data)), "rb") as w:
      channels, width, rate = w.getnchannels(), w.getsampwidth(), w.getframerate()
      raw = w.readframes(w.getnframes())
  except (wave.Error, EOFError) as e:
    raise ValueError(f"not a readable WAV file: {e}") from e
  if width not in (1, 2, 4):
    raise ValueError(f"WAV sample width {width} bytes is not supported")
  if len(raw) % (width * channels):
    raise ValueError("WAV data ends inside a frame (truncated)")
  if width == 1:  # unsigned 8-bit
    x = (np.frombuffer(raw, np.uint8).astype(np.float64) - 128.0) / 128.0
  else:
    x = np.frombuffer(raw, f"<i{width}").astype(np.float64) / float(2 ** (8 * width - 1))
  return x.reshape(-1, channels), rate


def load_audio(value, enc_cfg, norm, stats) -> Optional[np.ndarray]:
  """WAV bytes or a float waveform -> float32 [max_seconds * sample_rate]."""
  del norm
  rate = int(enc_cfg.sample_rate)
  size = int(round(enc_cfg.max_seconds * rate))
  if isinstance(value, (bytes, bytearray, np.bytes_)):
    try:
      x, got = decode_wav(value)
    except ValueError:
      _count(stats, "skipped_bad_audio")
      return None
    if got != rate:
      _count(stats, "skipped_bad_audio")
      return None
  else:
    x = np.asarray(value, np.float64)
    x = x[:, None] if x.ndim == 1 else x
  if x.ndim != 2 or not x.size or not np.all(np.isfinite(x)):
    _count(stats, "skipped_bad_audio")
    return None
  x = x.mean(axis=1)
  if len(x) > size:
    _count(stats, "truncated_audio")
    x = x[:size]
  out = np.zeros(size, np.float32)
  out[:len(x)] = x
  return out


def load_video(value, enc_cfg, norm, stats) -> Optional[np.ndarray]:
  """Encoded frames or an array [F, H, W, 3] -> float32 [frames, S, S, 3]."""
  frames = list(value) if value is not None else []
  if not frames:
    _count(stats, "skipped_bad_video")
    return None
  want = int(enc_cfg.frames)
  if len(frames) != want:
    _count(stats, "resampled_video_frames")
    frames = [frames[int(i)] for i in (np.arange(want) + 0.5) * len(frames) // want]
  local: dict = {}
  out = [load_image(f, enc_cfg, norm, local) for f in frames]
  if any(f is None for f in out):
    _count(stats, "skipped_bad_video")
    return None
  for k, v in local.items():  # conversions of readable frames count as for images
    _count(stats, k, v)
  return np.stack(out)


MEDIA.register("image")(Media("image", "vit", "pixels", "image_start", "image_end", load_image))
MEDIA.register("audio")(Media("audio", "whisper", "waveform", "audio_start", "audio_end",
                              load_audio))
MEDIA.register("video")(Media("video", "video", "frames", "video_start", "video_end",
                              load_video))


def kind_of_encoder(enc_type: str) -> Optional[str]:
  """The media kind an encoder type docks (None for text encoders)."""
  return next((k for k in MEDIA if MEDIA.get(k).encoder_type == enc_type), None)


def brackets(tokenizer, kind: str) -> tuple:
  """(open id, close id) of `kind`; a clear error when the tokenizer lacks them."""
  m = MEDIA.get(kind)
  ids = tuple(getattr(tokenizer, a, None) for a in (m.open, m.close))
  if None in ids:
    raise ValueError(f"tokenizer {type(tokenizer).__name__} has no {m.open} / {m.close} ids "
                     f"(the {kind} brackets); train one with them (data/tokenizer.py)")
  return ids
