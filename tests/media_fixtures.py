"""Audio and video files written by the tests: WAV / FLAC / OGG through
soundfile, mp4 (and other containers) through PyAV, from known signals."""
import fractions
import io

import numpy as np


def sine(freq, rate, seconds, amp=0.5, phase=0.0):
  """float64 samples of amp * sin(2 pi freq t + phase), t = n / rate."""
  t = np.arange(int(round(seconds * rate))) / rate
  return amp * np.sin(2 * np.pi * freq * t + phase)


def audio_bytes(samples, rate, fmt="WAV", subtype=None):
  import soundfile
  buf = io.BytesIO()
  soundfile.write(buf, samples, rate, format=fmt, subtype=subtype)
  return buf.getvalue()


def gray_frames(levels, height=48, width=64):
  """One constant-grey RGB frame per level, so a decoded frame names itself."""
  return [np.full((height, width, 3), v, np.uint8) for v in levels]


def video_bytes(frames, pts_ms, codec="mpeg4", fmt="mp4", pix_fmt="yuv420p"):
  """Encodes RGB uint8 frames shown at `pts_ms` milliseconds (so a variable
  frame rate is just uneven timestamps)."""
  import av
  buf = io.BytesIO()
  with av.open(buf, "w", format=fmt) as container:
    stream = container.add_stream(codec, rate=10)
    stream.height, stream.width = frames[0].shape[:2]
    stream.pix_fmt = pix_fmt
    for frame, pts in zip(frames, pts_ms):
      f = av.VideoFrame.from_ndarray(frame, format="rgb24")
      f.pts, f.time_base = int(pts), fractions.Fraction(1, 1000)
      for packet in stream.encode(f):
        container.mux(packet)
    for packet in stream.encode():
      container.mux(packet)
  return buf.getvalue()


def empty_video_bytes():
  """An AVI with a video stream and not one frame."""
  import av
  buf = io.BytesIO()
  with av.open(buf, "w", format="avi") as container:
    stream = container.add_stream("mpeg4", rate=10)
    stream.width = stream.height = 16
    stream.pix_fmt = "yuv420p"
    container.start_encoding()
  return buf.getvalue()
