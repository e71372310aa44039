"""Video decoding: encoded file bytes (mp4, webm, avi, ...: whatever the FFmpeg
bundled with PyAV reads) -> the frames a video encoder reads.

`decode_video(data, frames=F, image_size=S)` returns the batch contract's
clip (metalm_jax/batch.py, type "video"): float32 [F, S, S, 3], each frame
preprocessed exactly like an image (`images.preprocess_image`: the whole frame
bicubic-resized to S x S, then normalised with the run's mean / std).

Frames are sampled uniformly in time, by presentation timestamps: the clip's
span [t0, t_end) (t_end = last timestamp + the median frame interval) is cut
into F equal bins and each bin takes the frame on screen at its centre (the
last frame that starts at or before it). So a variable frame rate is sampled
by time, not by frame count, and a clip with fewer than F frames repeats
frames. Only those F frames are converted to RGB: a first pass reads the
packets' timestamps (no decoding), a second decodes. A stream without
timestamps is taken as constant-rate (frame k at time k).

`decode_frame_list(images, frames=F, image_size=S)` is the same for a clip
stored as a list of pictures (the embedded world's PNG frames; encoded bytes,
PIL images or arrays, or one array [n, H, W, 3]): picture k is shown at time
k, sampled by the same rule, and each picked picture is read like an image
(`images.to_rgb`; a mode conversion counts `converted_image_mode`).

Counted (keys of the returned counts, the pipeline's data/* counters):
  skipped_bad_video              unreadable / not a video / no video stream /
                                 a decoding error / an unreadable picture -> None
  skipped_empty_video            a video stream without a single frame, or an
                                 empty picture list -> None
  converted_variable_frame_rate  frame intervals differ by more than 10 %
  repeated_video_frames          fewer distinct frames than F (a short clip, or a
                                 frame held over several bins)
  resized_nonsquare_video        frames that are not square (any odd size)
"""
from __future__ import annotations

import io
from typing import Dict, List, Optional, Tuple

import numpy as np
from absl import logging

from metalm_jax import optional
from metalm_jax.media import images as images_lib

STAT_KEYS = ("skipped_bad_video", "skipped_empty_video", "converted_variable_frame_rate",
             "repeated_video_frames", "resized_nonsquare_video")
VFR_TOLERANCE = 0.1  # relative deviation of a frame interval from the median


def sample_times(times: List[int], frames: int) -> Tuple[np.ndarray, bool]:
  """Presentation times of a stream (any order, in stream ticks) -> (the F
  bin-centre times to show, whether the frame rate is variable)."""
  t = np.unique(np.asarray(times, np.int64))
  if t.size == 0:
    raise ValueError("no frame times")
  step = np.diff(t)
  interval = float(np.median(step)) if step.size else 1.0
  variable = bool(step.size) and bool(
      np.any(np.abs(step - interval) > VFR_TOLERANCE * interval + 1))
  start, end = float(t[0]), float(t[-1]) + interval
  centres = start + (np.arange(frames) + 0.5) * (end - start) / frames
  return centres, variable


def _packet_times(data: bytes) -> Tuple[List[int], bool]:
  """(the video packets' presentation times, whether every packet had one)."""
  av = optional.require("av", "decoding video files")
  with av.open(io.BytesIO(data)) as container:
    if not container.streams.video:
      raise ValueError("no video stream")
    stream = container.streams.video[0]
    if stream.codec_context is None:  # e.g. an mp4 cut before its codec header
      raise ValueError("the video stream has no decodable codec")
    pts = [p.pts for p in container.demux(stream) if p.size > 0]
  if all(p is not None for p in pts):
    return pts, True
  return list(range(len(pts))), False


def _pick_frames(data: bytes, centres: np.ndarray, timed: bool
                 ) -> Tuple[List[np.ndarray], int]:
  """(RGB uint8 frames on screen at each centre time, how many distinct
  frames they are), decoding in order and converting only those."""
  av = optional.require("av", "decoding video files")
  picked: List[Tuple[int, object]] = []  # (decode index, frame) per centre
  prev = None
  with av.open(io.BytesIO(data)) as container:
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    for k, frame in enumerate(container.decode(stream)):
      if timed and frame.pts is None:
        continue  # a frame the decoder could not time: not a candidate
      t = frame.pts if timed else k
      while len(picked) < len(centres) and t > centres[len(picked)]:
        picked.append(prev if prev is not None else (k, frame))
      if len(picked) == len(centres):
        break
      prev = (k, frame)
    while prev is not None and len(picked) < len(centres):
      picked.append(prev)
  rgb = {}
  for k, frame in picked:
    if k not in rgb:
      rgb[k] = frame.to_ndarray(format="rgb24")
  return [rgb[k] for k, _ in picked], len(rgb)


def read_frames(data: bytes, frames: int) -> Tuple[Optional[List[np.ndarray]], Dict[str, int]]:
  """Encoded video -> (F RGB uint8 frames [H, W, 3] sampled by time, or None, counts)."""
  optional.require("av", "decoding video files")  # raises outside the skip below
  try:
    if not isinstance(data, (bytes, bytearray, memoryview, np.bytes_)):
      raise ValueError(f"video data must be encoded file bytes, got {type(data).__name__}")
    data = bytes(data)
    times, timed = _packet_times(data)
    if not times:
      return None, {"skipped_empty_video": 1}
    centres, variable = sample_times(times, frames)
    rgb, distinct = _pick_frames(data, centres, timed)
  except Exception as e:  # noqa: BLE001  FFmpeg reports damaged data with many types
    logging.log_every_n_seconds(logging.WARNING, "skipped a video: %s: %s (counted "
                                "skipped_bad_video)", 10, type(e).__name__, e)
    return None, {"skipped_bad_video": 1}
  if not rgb:
    return None, {"skipped_empty_video": 1}
  counts = {}
  if variable:
    counts["converted_variable_frame_rate"] = 1
  if distinct < frames:
    counts["repeated_video_frames"] = 1
  if any(f.shape[0] != f.shape[1] for f in rgb):
    counts["resized_nonsquare_video"] = 1
  return rgb, counts


def decode_video(data, *, frames: int, image_size: int, mean=images_lib.CLIP_MEAN,
                 std=images_lib.CLIP_STD) -> Tuple[Optional[np.ndarray], Dict[str, int]]:
  """Encoded video bytes -> (float32 [F, S, S, 3] normalised, or None, counts)."""
  if frames < 1:
    raise ValueError(f"decode_video: frames={frames} must be >= 1")
  rgb, counts = read_frames(data, frames)
  if rgb is None:
    return None, counts
  return _normalise(rgb, image_size, mean, std), counts


def _normalise(rgb: List[np.ndarray], image_size: int, mean, std) -> np.ndarray:
  return np.stack([images_lib.preprocess_image(f, image_size, mean, std)
                   for f in rgb]).astype(np.float32)


def decode_frame_list(pictures, *, frames: int, image_size: int, mean=images_lib.CLIP_MEAN,
                      std=images_lib.CLIP_STD) -> Tuple[Optional[np.ndarray], Dict[str, int]]:
  """A clip as a sequence of pictures (see the module docstring) -> (float32
  [F, S, S, 3] normalised, or None, counts)."""
  if frames < 1:
    raise ValueError(f"decode_frame_list: frames={frames} must be >= 1")
  pictures = [] if pictures is None else list(pictures)
  if not pictures:
    return None, {"skipped_empty_video": 1}
  centres, _ = sample_times(list(range(len(pictures))), frames)
  picked = np.clip(np.floor(centres).astype(np.int64), 0, len(pictures) - 1)
  counts: Dict[str, int] = {}
  rgb = {}
  for k in dict.fromkeys(picked.tolist()):
    rgb[k], more = images_lib.to_rgb(pictures[k])
    if rgb[k] is None:
      logging.log_every_n_seconds(logging.WARNING, "skipped a video: picture %d of %d is "
                                  "unreadable (counted skipped_bad_video)", 10, k, len(pictures))
      return None, {"skipped_bad_video": 1}
    if more.get("converted_image_mode"):
      counts["converted_image_mode"] = 1
  if len(rgb) < frames:
    counts["repeated_video_frames"] = 1
  if any(f.shape[0] != f.shape[1] for f in rgb.values()):
    counts["resized_nonsquare_video"] = 1
  return _normalise([rgb[k] for k in picked.tolist()], image_size, mean, std), counts
