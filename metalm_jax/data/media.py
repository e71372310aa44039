"""Docked media kinds: what an image, a sound clip or a video becomes in a row.

Registry `MEDIA`: kind name -> `Media`: the encoder type that docks it, the
batch input array it fills (metalm_jax/batch.py), the tokenizer attributes of
its brackets (`<image>` ... `</image>`, `<audio>` ... `</audio>`, `<video>`
... `</video>`), and `load(value, enc_cfg, norm, stats)` -> the encoder's
input for one item (float32, the contract's per-item shape) or None when the
value is unusable (counted in `stats`).

Loaders (shared by the pipeline's tasks, the evaluators' prompts and the
serving Predictor, so an evaluated or served clip goes through exactly the
training steps); each is a thin dispatch onto the one decoder of its kind:
  image  images.to_rgb + images.preprocess_image (CLIP normalisation);
  audio  encoded file bytes (WAV / FLAC / OGG / MP3: the embedded world's WAVs
         and real files alike) -> audio.decode_audio; a float waveform [n] or
         [n, channels] at the encoder's sample_rate, or (samples, rate) ->
         the same steps (audio.prepare_waveform): downmix, resample, cut to
         max_seconds, zero-pad, silence and bad data skipped;
  video  encoded file bytes (mp4, webm, ...) -> video.decode_video; a
         sequence of pictures (the world's PNG frames, arrays) or one array
         [n, H, W, 3] -> video.decode_frame_list; both sample cfg.frames
         frames uniformly in time and preprocess each like an image.
Every event is counted under the decoder's own name (audio.STAT_KEYS,
video.STAT_KEYS, the image counters): the counters tasks.STAT_KEYS lists.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import numpy as np

from metalm_jax.data import audio as audio_lib
from metalm_jax.data import images as images_lib
from metalm_jax.data import video as video_lib
from metalm_jax.registry import Registry

MEDIA = Registry("media kind")
_ENCODED = (bytes, bytearray, memoryview, np.bytes_)  # file contents


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


def _merge(stats: dict, counts: dict) -> None:
  for k, v in counts.items():
    _count(stats, k, v)


def load_image(value, enc_cfg, norm, stats) -> Optional[np.ndarray]:
  """Encoded bytes / PIL / array -> float32 [S, S, 3]; `norm` = (mean, std)."""
  rgb, counts = images_lib.to_rgb(value)
  _merge(stats, counts)
  if rgb is None:
    return None
  if rgb.shape[0] != rgb.shape[1]:
    _count(stats, "resized_nonsquare_image")
  return images_lib.preprocess_image(rgb, enc_cfg.image_size, *norm)


def load_audio(value, enc_cfg, norm, stats) -> Optional[np.ndarray]:
  """Encoded bytes, (samples, rate) or a float waveform at the encoder's rate
  -> float32 [max_seconds * sample_rate], or None (counted)."""
  del norm
  rate = int(enc_cfg.sample_rate)
  if not isinstance(value, _ENCODED + (tuple,)):
    value = (value, rate)
  try:
    wave, counts = audio_lib.decode_audio(value, sample_rate=rate,
                                          max_seconds=float(enc_cfg.max_seconds))
  except (TypeError, ValueError):  # samples that are not numbers
    wave, counts = None, {"skipped_bad_audio": 1}
  _merge(stats, counts)
  return wave


def load_video(value, enc_cfg, norm, stats) -> Optional[np.ndarray]:
  """Encoded file bytes, or a sequence of pictures / an array [n, H, W, 3]
  -> float32 [frames, S, S, 3], or None (counted)."""
  decode = (video_lib.decode_video if isinstance(value, _ENCODED)
            else video_lib.decode_frame_list)
  clip, counts = decode(value, frames=int(enc_cfg.frames), image_size=int(enc_cfg.image_size),
                        mean=norm[0], std=norm[1])
  _merge(stats, counts)
  return clip


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
