"""Decoding real audio and video files (media/audio.py, media/video.py): the
numbers against float64 references (analytic sines, known grey levels), and
every kind of bad input skipped or converted with its counter."""
import numpy as np
import pytest

from metalm_jax.data import tasks
from metalm_jax.media import audio, images, video
from tests import media_fixtures as mf

RATE = 16000


def _decode(data, seconds=1.0, **kw):
  return audio.decode_audio(data, sample_rate=RATE, max_seconds=seconds, **kw)


# ---------------------------------------------------------------- audio

@pytest.mark.parametrize("rate_in", [44100, 48000, 22050, 8000])
def test_resampling_preserves_a_sine(rate_in):
  """The resampled tone equals the same tone sampled at 16 kHz directly
  (float64, analytic) to 1e-3 away from the clip's first and last 10 ms."""
  freq = 1234.5
  wave, counts = audio.prepare_waveform(mf.sine(freq, rate_in, 1.0), rate_in, sample_rate=RATE,
                                        max_seconds=1.0)
  assert counts == {"resampled_audio": 1} and wave.shape == (RATE,) and wave.dtype == np.float32
  ref = mf.sine(freq, RATE, 1.0)
  np.testing.assert_allclose(wave[160:-160], ref[160:-160], atol=1e-3)
  spectrum = np.abs(np.fft.rfft(wave.astype(np.float64) * np.hanning(RATE)))
  assert abs(np.argmax(spectrum) - freq) <= 0.5  # 1 Hz bins


def test_resampling_round_trip_and_anti_aliasing():
  rng = np.random.default_rng(0)
  # Band-limited noise (tones up to 0.75 x Nyquist, where the filter's ripple
  # is ~0.2 %) survives 16k -> 44.1k -> 16k.
  t = np.arange(RATE) / RATE
  amps = rng.uniform(0.02, 0.1, 20)
  x = sum(a * np.sin(2 * np.pi * f * t + p) for a, f, p in
          zip(amps, rng.uniform(50, 6000, 20), rng.uniform(0, 6, 20)))
  back = audio.resample(audio.resample(x, RATE, 44100), 44100, RATE)
  assert back.shape == (RATE,)
  np.testing.assert_allclose(back[200:-200], x[200:-200], atol=3e-3 * amps.sum())
  # A 10 kHz tone is above the new Nyquist (8 kHz): filtered out, not folded to 6 kHz.
  folded = audio.resample(mf.sine(10000, 44100, 1.0), 44100, RATE)
  assert np.sqrt(np.mean(folded[200:-200] ** 2)) < 5e-3
  # A ratio with large terms is rounded to one whose terms fit.
  assert audio.rate_ratio(16001, RATE) == (1, 1)
  assert audio.rate_ratio(44100, RATE) == (160, 441)
  up, down = audio.rate_ratio(44101, RATE)
  assert max(up, down) <= audio.MAX_RATIO_TERM and abs(up / down - RATE / 44101) < 1e-5


@pytest.mark.parametrize("fmt,subtype", [("WAV", "PCM_16"), ("FLAC", "PCM_16"), ("OGG", "VORBIS")])
def test_stereo_files_are_downmixed(fmt, subtype):
  # int16 samples, written as they are (no quantisation by libsndfile).
  left = np.round(mf.sine(440, RATE, 0.5, 0.4) * 32768).astype(np.int16)
  right = np.round(mf.sine(1000, RATE, 0.5, 0.2) * 32768).astype(np.int16)
  data = mf.audio_bytes(np.stack([left, right], 1), RATE, fmt, subtype)
  wave, counts = _decode(data)
  assert counts == {"converted_audio_channels": 1} and wave.shape == (RATE,)
  assert (wave[RATE // 2:] == 0).all()  # zero-padded to max_seconds
  if fmt == "OGG":  # lossy: the two tones are there at their amplitudes
    spec = np.abs(np.fft.rfft(wave[:RATE // 2].astype(np.float64))) / (RATE / 4)
    np.testing.assert_allclose(spec[[220, 500]], [0.2, 0.1], atol=0.02)
  else:  # lossless: the mean of the channels, read as int / 32768
    ref = (left.astype(np.float64) + right) / 2 / 32768
    np.testing.assert_allclose(wave[:RATE // 2], ref, atol=1e-7)


def test_long_clips_are_truncated_and_rate_and_length_checked():
  x = mf.sine(300, 22050, 3.0)
  wave, counts = _decode(mf.audio_bytes(x, 22050, "FLAC"), seconds=2.0)
  assert counts == {"truncated_audio": 1, "resampled_audio": 1} and wave.shape == (2 * RATE,)
  # Cut with room for the filter: the last samples are right too (no edge effect).
  np.testing.assert_allclose(wave[160:], mf.sine(300, RATE, 2.0)[160:], atol=2e-3)
  wave, counts = _decode((mf.sine(300, RATE, 1.5), RATE))  # already 16 kHz: cut exactly
  assert counts == {"truncated_audio": 1}
  np.testing.assert_array_equal(wave, mf.sine(300, RATE, 1.5)[:RATE].astype(np.float32))
  wave, counts = _decode((mf.sine(300, RATE, 1.0), RATE))  # exactly max_seconds
  assert counts == {} and wave.shape == (RATE,)


def test_bad_and_silent_audio_are_skipped_and_counted():
  good = mf.audio_bytes(mf.sine(440, RATE, 0.5), RATE, "WAV", "PCM_16")
  flac = mf.audio_bytes(mf.sine(440, RATE, 0.5), RATE, "FLAC")
  nan = mf.sine(440, RATE, 0.5)
  nan[100] = np.nan
  bad = [b"", b"RIFF not audio at all", good[:len(good) // 2], flac[:len(flac) // 2],
         good[:30], mf.audio_bytes(nan, RATE, "WAV", "FLOAT"), (np.zeros((0, 2)), RATE),
         (mf.sine(440, 7, 1.0), 7)]  # a rate too low to resample
  for data in bad:
    assert _decode(data) == (None, {"skipped_bad_audio": 1}), data[:40]
  assert audio.wav_is_truncated(good[:-100]) and not audio.wav_is_truncated(good)
  assert not audio.wav_is_truncated(good[:-audio.WAV_SLACK])  # a writer's off-by-a-few
  quiet = mf.audio_bytes(np.stack([mf.sine(440, 8000, 0.5, 5e-5)] * 2, 1), 8000, "WAV", "FLOAT")
  assert _decode(quiet) == (None, {"skipped_silent_audio": 1, "converted_audio_channels": 1,
                                   "resampled_audio": 1})
  assert _decode((np.zeros(RATE), RATE)) == (None, {"skipped_silent_audio": 1})
  wave, counts = _decode((mf.sine(440, RATE, 0.5, 5e-5), RATE), silence_peak=0.0)  # disabled
  assert counts == {} and np.abs(wave).max() > 0


def test_counters_are_pipeline_stats():
  for key in audio.STAT_KEYS + video.STAT_KEYS:
    assert key in tasks.STAT_KEYS
    assert tasks.new_stats(**{key: 2})[key] == 2


# ---------------------------------------------------------------- video

LEVELS = [0, 30, 60, 90, 120, 150, 180, 210]


def _levels(clip):
  """The grey level of each decoded frame (the codec's error is a few steps)."""
  return [int(np.round(f.mean())) for f in clip]


def test_frames_are_sampled_by_time_and_normalised_like_images():
  data = mf.video_bytes(mf.gray_frames(LEVELS), [100 * k for k in range(8)])
  frames, counts = video.read_frames(data, 4)
  assert counts == {"resized_nonsquare_video": 1}  # 64 x 48
  # 8 frames of 100 ms, 4 bins of 200 ms: the frames on screen at 100, 300, 500, 700 ms.
  np.testing.assert_allclose(_levels(frames), [30, 90, 150, 210], atol=3)
  clip, _ = video.decode_video(data, frames=4, image_size=32)
  assert clip.shape == (4, 32, 32, 3) and clip.dtype == np.float32
  for level, frame in zip([30, 90, 150, 210], clip):  # (v / 255 - mean) / std, per channel
    ref = (level / 255.0 - np.array(images.CLIP_MEAN)) / np.array(images.CLIP_STD)
    np.testing.assert_allclose(frame, np.broadcast_to(ref, frame.shape), atol=4 / 255 / 0.26)
  mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
  clip2, _ = video.decode_video(data, frames=4, image_size=32, mean=mean, std=std)
  np.testing.assert_allclose(clip2, np.stack([images.preprocess_image(f, 32, mean, std)
                                              for f in frames]), atol=1e-6)


def test_variable_frame_rate_short_clips_and_odd_sizes():
  # Frames at 0, 100, 200, 600, 700, 1500 ms: the clip spans 1.6 s, bins of 0.4 s
  # centred at 200, 600, 1000, 1400 ms show the frames starting at 200, 600, 700, 700.
  vfr = mf.video_bytes(mf.gray_frames(LEVELS[:6], 32, 32), [0, 100, 200, 600, 700, 1500])
  frames, counts = video.read_frames(vfr, 4)
  np.testing.assert_allclose(_levels(frames), [60, 90, 120, 120], atol=3)
  assert counts == {"converted_variable_frame_rate": 1, "repeated_video_frames": 1}
  short = mf.video_bytes(mf.gray_frames([40, 200], 32, 32), [0, 100])
  frames, counts = video.read_frames(short, 4)
  np.testing.assert_allclose(_levels(frames), [40, 40, 200, 200], atol=3)
  assert counts == {"repeated_video_frames": 1}
  odd = mf.video_bytes(mf.gray_frames([100] * 3, 17, 33), [0, 100, 200], codec="libx264",
                       pix_fmt="yuv444p")
  clip, counts = video.decode_video(odd, frames=2, image_size=16)
  assert counts == {"resized_nonsquare_video": 1}
  assert clip.shape == (2, 16, 16, 3) and np.isfinite(clip).all()
  # A raw H.264 stream has no timestamps: frames are taken as evenly spaced.
  raw = mf.video_bytes(mf.gray_frames(LEVELS[:4], 16, 16), [0, 100, 200, 300], codec="libx264",
                       fmt="h264")
  frames, counts = video.read_frames(raw, 2)
  np.testing.assert_allclose(_levels(frames), [30, 90], atol=3)
  assert counts == {}


def test_bad_videos_are_skipped_and_counted():
  good = mf.video_bytes(mf.gray_frames(LEVELS[:4], 16, 16), [0, 100, 200, 300])
  sound = mf.audio_bytes(mf.sine(440, RATE, 0.2), RATE)  # a file without a video stream
  for data in [b"", b"\x00\x00\x00\x18ftypmp42 garbage", good[:len(good) // 2], sound]:
    assert video.decode_video(data, frames=4, image_size=16) == (None, {"skipped_bad_video": 1})
  assert video.decode_video(mf.empty_video_bytes(), frames=4, image_size=16) == (
      None, {"skipped_empty_video": 1})
  with pytest.raises(ValueError, match="frames=0"):
    video.decode_video(good, frames=0, image_size=16)
