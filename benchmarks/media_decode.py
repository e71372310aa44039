"""Decoding cost of real audio and video files (data/audio.py, data/video.py)
per clip, on synthetic files shaped like the real sets: a 10 s 44.1 kHz
stereo FLAC (AudioCaps / Clotho-like) to a 16 kHz mono clip of --max_seconds,
and a 10 s 320x240 30 fps H.264 mp4 (MSR-VTT-like) to --frames frames at
--image_size. Prints clips/s; wall-clock on this machine (load from other
processes inflates it).

    python benchmarks/media_decode.py --frames=8 --image_size=224 --max_seconds=10
"""
import fractions
import io
import time

import numpy as np
from absl import app, flags

from metalm_jax.data import audio, video

flags.DEFINE_integer("frames", 8, "frames per video clip")
flags.DEFINE_integer("image_size", 224, "frame size")
flags.DEFINE_float("max_seconds", 10.0, "audio clip length")
flags.DEFINE_integer("repeats", 5, "timed decodes of each file")
FLAGS = flags.FLAGS


def _flac() -> bytes:
  import soundfile
  rng = np.random.default_rng(0)
  x = 0.1 * rng.standard_normal((441000, 2))
  buf = io.BytesIO()
  soundfile.write(buf, x, 44100, format="FLAC")
  return buf.getvalue()


def _mp4() -> bytes:
  import av
  rng = np.random.default_rng(0)
  buf = io.BytesIO()
  with av.open(buf, "w", format="mp4") as container:
    stream = container.add_stream("libx264", rate=30)
    stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
    base = rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)
    for k in range(300):
      frame = av.VideoFrame.from_ndarray(np.roll(base, 2 * k, axis=1), format="rgb24")
      frame.pts, frame.time_base = k, fractions.Fraction(1, 30)
      for packet in stream.encode(frame):
        container.mux(packet)
    for packet in stream.encode():
      container.mux(packet)
  return buf.getvalue()


def _rate(fn, repeats: int) -> float:
  fn()  # warm-up (imports, filter design)
  start = time.perf_counter()
  for _ in range(repeats):
    fn()
  return repeats / (time.perf_counter() - start)


def main(argv):
  del argv
  flac, mp4 = _flac(), _mp4()
  a = _rate(lambda: audio.decode_audio(flac, sample_rate=16000,
                                       max_seconds=FLAGS.max_seconds), FLAGS.repeats)
  v = _rate(lambda: video.decode_video(mp4, frames=FLAGS.frames, image_size=FLAGS.image_size),
            FLAGS.repeats)
  print(f"audio: 10 s 44.1 kHz stereo FLAC ({len(flac) / 1e6:.1f} MB) -> "
        f"{FLAGS.max_seconds:g} s 16 kHz mono: {a:.1f} clips/s")
  print(f"video: 10 s 320x240 30 fps H.264 mp4 ({len(mp4) / 1e6:.1f} MB) -> "
        f"{FLAGS.frames} x {FLAGS.image_size} px: {v:.1f} clips/s")


if __name__ == "__main__":
  app.run(main)
