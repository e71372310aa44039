"""Decoding cost of real audio and video files (media/audio.py, media/video.py)
per clip, on synthetic files shaped like the real sets: a 10 s 44.1 kHz
stereo FLAC (AudioCaps / Clotho-like) to a 16 kHz mono clip of --max_seconds,
and a 10 s 320x240 30 fps H.264 mp4 (MSR-VTT-like) to --frames frames at
--image_size. Prints clips/s; wall-clock on this machine (load from other
processes inflates it).

    python benchmarks/media_decode.py --frames=8 --image_size=224 --max_seconds=10

--json_out writes the figures with their provenance (metalm_jax/provenance.py).
"""
import fractions
import io
import time

import numpy as np
from absl import flags

from metalm_jax import absl_run, provenance
from metalm_jax.media import audio, video

flags.DEFINE_integer("frames", 8, "frames per video clip")
flags.DEFINE_integer("image_size", 224, "frame size")
flags.DEFINE_float("max_seconds", 10.0, "audio clip length")
flags.DEFINE_integer("repeats", 5, "timed decodes of each file")
flags.DEFINE_string("json_out", "", "also write the figures (and their provenance) here")
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
  begun = provenance.start()
  flac, mp4 = _flac(), _mp4()
  a = _rate(lambda: audio.decode_audio(flac, sample_rate=16000,
                                       max_seconds=FLAGS.max_seconds), FLAGS.repeats)
  v = _rate(lambda: video.decode_video(mp4, frames=FLAGS.frames, image_size=FLAGS.image_size),
            FLAGS.repeats)
  print(f"audio: 10 s 44.1 kHz stereo FLAC ({len(flac) / 1e6:.1f} MB) -> "
        f"{FLAGS.max_seconds:g} s 16 kHz mono: {a:.1f} clips/s")
  print(f"video: 10 s 320x240 30 fps H.264 mp4 ({len(mp4) / 1e6:.1f} MB) -> "
        f"{FLAGS.frames} x {FLAGS.image_size} px: {v:.1f} clips/s")
  if FLAGS.json_out:
    provenance.write_json(FLAGS.json_out, {
        "audio_clips_per_s": a, "audio_flac_mb": len(flac) / 1e6,
        "max_seconds": FLAGS.max_seconds, "video_clips_per_s": v,
        "video_mp4_mb": len(mp4) / 1e6, "frames": FLAGS.frames,
        "image_size": FLAGS.image_size, "repeats": FLAGS.repeats}, begun, devices="subprocess")


if __name__ == "__main__":
  absl_run.run(main)
