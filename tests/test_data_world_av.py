"""Sound and motion in the embedded world: clips whose tones follow the scene
(pitch, waveform, loudness, order: measured with a float64 DFT), videos whose
event shows in the pixels, answers that follow the scene, held-out pairs kept
out, and the media loaders' conversions and skips, each counted."""
import io
import json
import wave

import numpy as np
from PIL import Image

from metalm_jax.data import world
from metalm_jax.models.modalities import audio as audio_modality
from metalm_jax.models.modalities import video as video_modality
from metalm_jax.data import world_av as W
from metalm_jax.media.images import CLIP_MEAN, CLIP_STD

RATE = W.SAMPLE_RATE


def _read_wav(data):
  """Independent decode: int16 PCM -> float64 / 32768."""
  with wave.open(io.BytesIO(data), "rb") as w:
    assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, RATE)
    return np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float64) / 32768.0


def _amplitude(x, freq):
  """Amplitude of the sinusoid at `freq` in x (Hann-windowed DFT at that frequency)."""
  n = np.arange(len(x))
  w = np.hanning(len(x))
  return 2 * abs(np.sum(x * w * np.exp(-2j * np.pi * freq * n / RATE))) / w.sum()


# Harmonic amplitudes relative to the fundamental, per shape (the waveforms'
# Fourier series): sine; square 1/k odd; triangle 1/k^2 odd; sawtooth 1/k;
# buzz: 6 equal harmonics.
RATIOS = {"circle": {2: 0, 3: 0}, "square": {2: 0, 3: 1 / 3}, "triangle": {2: 0, 3: 1 / 9},
          "diamond": {2: 1 / 2, 3: 1 / 3}, "cross": {2: 1, 3: 1}}


def test_tones_follow_the_scene():
  """Each object sounds once, in left-to-right order: its segment's
  fundamental is its colour's pitch, its harmonics its shape's, its peak its
  size's loudness; the gaps are silent."""
  step, tone = int(round((W.TONE_S + W.GAP_S) * RATE)), int(round(W.TONE_S * RATE))
  seen = set()
  for i in range(40):
    objs = world.make_scene(5, "train", i)
    x = _read_wav(W.av_record(5, "train", i, 32)["audio"])
    assert len(x) == step * len(objs)
    for k, o in enumerate(sorted(objs, key=lambda o: o.x)):
      seg = x[k * step:k * step + tone]
      assert np.abs(x[k * step + tone:(k + 1) * step]).max() == 0  # gap
      f = W.PITCH_HZ[o.color]
      a1 = _amplitude(seg, f)
      others = [c for c in W.PITCH_HZ if c != o.color]
      assert all(_amplitude(seg, W.PITCH_HZ[c]) < 0.05 * a1 for c in others), (o, k)
      for h, ratio in RATIOS[o.shape].items():
        if h * f < RATE / 2:
          assert abs(_amplitude(seg, h * f) / a1 - ratio) < 0.03, (o, h)
      np.testing.assert_allclose(np.abs(seg).max(), W.LOUDNESS[o.size], atol=2e-3)
      seen.add((o.shape, o.size))
  assert {s for s, _ in seen} == set(world.SHAPES)


def _truth(q, objs):
  order = sorted(objs, key=lambda o: o.x)
  pitch = [W.PITCH_HZ[o.color] for o in order]
  if q == "how many sounds are there?":
    return str(len(objs))
  if q.startswith("what shape makes the"):
    best = max(pitch) if "highest" in q else min(pitch)
    assert pitch.count(best) == 1 and len(objs) > 1
    return order[pitch.index(best)].shape
  if q == "what color is the first sound?":
    return order[0].color
  assert q == "is the last sound loud?"
  return "yes" if order[-1].size == "large" else "no"


def test_audio_questions_and_captions_follow_the_scene():
  types = set()
  for i in range(150):
    objs = world.make_scene(1, "train", i)
    r = W.av_record(1, "train", i, 32)
    for q, t, ans in zip(r["audio_questions"], r["audio_question_types"], r["audio_answers"]):
      types.add(t)
      assert list(ans) == [_truth(q, objs)] * 10, q
    order = sorted(objs, key=lambda o: o.x)
    words = [f"{o.color} {o.shape}" for o in order]
    first = r["audio_captions"][0]
    assert [first.index(w) for w in words] == sorted(first.index(w) for w in words)
  assert types == {"count", "highest", "lowest", "first", "loud"}


def test_audio_image_items_need_both():
  """The edited sound: `same` is the scene's clip, `silent` lacks exactly the
  named object's tone, `recolor` sounds one object at another pitch; the
  answers follow the edit; never a held-out pair."""
  kinds = set()
  for i in range(60):
    objs = world.make_scene(2, "train", i)
    it = W.av_item(objs, np.random.default_rng(i))
    kind = it["edit"]["kind"]
    kinds.add(kind)
    answers = dict(zip(it["questions"], (a[0] for a in it["answers"])))
    assert answers[W.AV_QUESTIONS[0]] == ("yes" if kind == "same" else "no")
    if kind == "same":
      np.testing.assert_array_equal(it["waveform"], W.clip(objs))
      assert answers[W.AV_QUESTIONS[1]] == "none"
    elif kind == "silent":
      gone = [o for o in objs if f"{o.color} {o.shape}" == it["edit"]["object"]]
      assert len(gone) == 1 and answers[W.AV_QUESTIONS[1]] == it["edit"]["object"]
      np.testing.assert_array_equal(it["waveform"], W.clip([o for o in objs if o is not gone[0]]))
    else:
      assert W.AV_QUESTIONS[1] not in answers
      assert (it["edit"]["color"], it["edit"]["object"].split()[1]) not in world.heldout_pairs()
      assert not np.array_equal(it["waveform"], W.clip(objs))
  assert kinds == {"same", "silent", "recolor"}


def _mask(img, color):
  return np.all(img == np.array(world.COLORS[color]), axis=-1)


def test_video_events_show_in_the_frames():
  """Frames are the renders of the event's objects; a moving object's pixels
  shift by MOVE of the width in its direction, an appearing one is absent
  before its frame, a recoloured one changes colour at its frame (checked on
  objects whose colours are unique in the scene and, for moves, not covered)."""
  kinds = set()
  for i in range(60):
    objs = world.make_scene(3, "validation", i)
    r = W.av_record(3, "validation", i, 64)
    event = json.loads(r["video_event"])
    o = objs[event["object"]]
    frames = [np.asarray(Image.open(io.BytesIO(f)).convert("RGB")) for f in r["video"]]
    assert len(frames) == W.FRAMES
    for f, img in enumerate(frames):
      np.testing.assert_array_equal(img, world.render(W.frame_objects(objs, event, f), 64))
    if sum(p.color == o.color for p in objs) != 1:
      continue
    kinds.add(event["kind"])
    first, last = _mask(frames[0], o.color), _mask(frames[-1], o.color)
    if event["kind"] == "move":
      if abs(int(first.sum()) - int(last.sum())) > 0.05 * first.sum():
        continue  # partly covered by another object in one of the frames
      dx, dy = W.DIRECTIONS[event["direction"]]
      shift = [np.mean(np.nonzero(last)[ax]) - np.mean(np.nonzero(first)[ax]) for ax in (1, 0)]
      np.testing.assert_allclose(shift, [dx * W.MOVE * 64, dy * W.MOVE * 64], atol=2.5)
    elif event["kind"] == "appear":
      k = event["frame"]
      assert not _mask(frames[k - 1], o.color).any() and _mask(frames[k], o.color).any()
    elif all(p.color != event["color"] for p in objs):
      k = event["frame"]
      assert _mask(frames[k - 1], o.color).any() and not _mask(frames[k], o.color).any()
      assert _mask(frames[k], event["color"]).any()
  assert kinds == set(W.EVENTS)


def test_video_questions_follow_the_event():
  for i in range(100):
    objs = world.make_scene(4, "train", i)
    r = W.av_record(4, "train", i, 16)
    e = json.loads(r["video_event"])
    o = objs[e["object"]]
    name = f"{o.color} {o.shape}"
    got = {q: a[0] for q, a in zip(r["video_questions"], r["video_answers"])}
    if e["kind"] == "move" or "which object moved?" in got:  # some videos without a move
      assert got["which object moved?"] == (name if e["kind"] == "move" else "none")
    assert got["how many objects are there at the start?"] == str(
        len(objs) - (e["kind"] == "appear"))
    assert got[f"what happens to the {name}?"] == W.HAPPENS[e["kind"]]
    if e["kind"] == "move":
      assert got[f"which way does the {name} move?"] == e["direction"]
      assert r["video_captions"][0] == f"the {name} moves {e['direction']}."
    if e["kind"] == "recolor":
      assert got[f"what color does the {name} turn?"] == e["color"]


def test_heldout_pairs_stay_out_of_train_and_validation_media():
  held = set(world.heldout_pairs())
  for split in ("train", "validation"):
    for i in range(150):
      objs = world.make_scene(0, split, i)
      e = W.video_event(objs, np.random.default_rng([0, world.SPLITS.index(split), i, 3]))
      for f in range(W.FRAMES):
        assert not {(p.color, p.shape) for p in W.frame_objects(objs, e, f)} & held
  a, b = W.av_record(0, "test_heldout", 3, 32), W.av_record(0, "test_heldout", 3, 32)
  for k in a:
    np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]))


# ---------------------------------------------------------------- media loaders
class _Enc(dict):
  __getattr__ = dict.__getitem__


AUDIO_CFG = _Enc(sample_rate=RATE, max_seconds=0.5)
VIDEO_CFG = _Enc(frames=4, image_size=32)
NORM = (CLIP_MEAN, CLIP_STD)


def _wav(x, rate=RATE, channels=1):
  pcm = np.round(np.asarray(x) * 32767).astype("<i2")
  buf = io.BytesIO()
  with wave.open(buf, "wb") as w:
    w.setnchannels(channels)
    w.setsampwidth(2)
    w.setframerate(rate)
    w.writeframes(pcm.tobytes())
  return buf.getvalue()


def test_audio_loader_pads_cuts_downmixes_and_counts():
  """The loader is media/audio.py's decoder: the world's WAVs, other rates,
  stereo and bad bytes are converted or skipped under its counters."""
  size = int(AUDIO_CFG.max_seconds * RATE)
  short = np.sin(np.arange(3000) / 7) * 0.5
  stats = {}
  got = audio_modality.load(_wav(short), AUDIO_CFG, NORM, stats)
  ref = np.round(short * 32767) / 32768
  np.testing.assert_allclose(got[:3000], ref, atol=1e-7)
  assert got.dtype == np.float32 and got.shape == (size,) and not got[3000:].any()
  assert not any(stats.values())
  long = np.linspace(-0.5, 0.5, size + 100)
  got = audio_modality.load(_wav(long), AUDIO_CFG, NORM, stats)
  np.testing.assert_allclose(got, np.round(long[:size] * 32767) / 32768, atol=1e-7)
  assert stats == {"truncated_audio": 1}
  stereo = np.stack([short, -0.5 * short], 1).reshape(-1)
  stats = {}
  got = audio_modality.load(_wav(stereo, channels=2), AUDIO_CFG, NORM, stats)
  np.testing.assert_allclose(got[:3000], 0.25 * np.round(short * 32767) / 32768, atol=1e-4)
  assert stats == {"converted_audio_channels": 1}
  stats = {}  # a waveform array at the encoder's rate: the same steps
  np.testing.assert_array_equal(audio_modality.load(long, AUDIO_CFG, NORM, stats),
                                long[:size].astype(np.float32))
  assert stats == {"truncated_audio": 1}
  stats = {}  # 8 kHz: resampled (a 400 Hz tone stays a 400 Hz tone)
  tone = 0.5 * np.sin(2 * np.pi * 400 * np.arange(4000) / 8000)
  got = audio_modality.load(_wav(tone, rate=8000), AUDIO_CFG, NORM, stats)
  assert stats == {"resampled_audio": 1}
  assert abs(_amplitude(got[800:7200], 400) - 0.5) < 0.01
  for bad, key in ((b"RIFF1234WAVEjunk", "skipped_bad_audio"), (b"", "skipped_bad_audio"),
                   (_wav(short)[:-100], "skipped_bad_audio"),
                   (np.array(["not", "samples"]), "skipped_bad_audio"),
                   (_wav(np.zeros(3000)), "skipped_silent_audio")):
    stats = {}
    assert audio_modality.load(bad, AUDIO_CFG, NORM, stats) is None
    assert stats == {key: 1}, bad[:20]


def test_video_loader_resamples_frames_and_counts():
  """Pictures are sampled in time by media/video.py's rule and counted under
  its names."""
  imgs = [np.full((32, 32, 3), 40 * k, np.uint8) for k in range(6)]
  pngs = [world.png_bytes(x) for x in imgs]
  stats = {}
  got = video_modality.load(pngs[:4], VIDEO_CFG, NORM, stats)
  ref = (np.stack(imgs[:4]) / 255.0 - np.array(CLIP_MEAN)) / np.array(CLIP_STD)
  np.testing.assert_allclose(got, ref, atol=1e-5)
  assert got.shape == (4, 32, 32, 3) and not any(stats.values())
  np.testing.assert_array_equal(video_modality.load(np.stack(imgs[:4]), VIDEO_CFG, NORM, stats),
                                got)  # one uint8 array [F, H, W, 3]: the same
  got = video_modality.load(pngs, VIDEO_CFG, NORM, stats)  # 6 frames -> 4, uniform in time
  want = [0, 2, 3, 5]  # the source frames holding times 1/8, 3/8, 5/8, 7/8 of the clip
  np.testing.assert_allclose(got, ((np.stack([imgs[i] for i in want]) / 255.0 - CLIP_MEAN)
                                   / CLIP_STD), atol=1e-5)
  assert not any(stats.values())  # sampling more pictures than frames is no event
  got = video_modality.load(pngs[:2], VIDEO_CFG, NORM, stats)  # 2 -> 4: each shown twice
  np.testing.assert_allclose(got, ((np.stack([imgs[i] for i in (0, 0, 1, 1)]) / 255.0
                                    - CLIP_MEAN) / CLIP_STD), atol=1e-5)
  assert stats == {"repeated_video_frames": 1}
  stats = {}
  video_modality.load([world.png_bytes(np.zeros((32, 40, 3), np.uint8))] * 4, VIDEO_CFG, NORM,
                   stats)
  assert stats == {"resized_nonsquare_video": 1}
  for bad, key in (([], "skipped_empty_video"),
                   ([pngs[0], b"not a png", pngs[1], pngs[2]], "skipped_bad_video"),
                   (b"not a video file", "skipped_bad_video")):
    stats = {}
    assert video_modality.load(bad, VIDEO_CFG, NORM, stats) is None
    assert stats == {key: 1}


def _qa_rows(split, n):
  """(kind, type, question, answer) of the audio and video questions of n
  scenes, drawn as av_record draws them (without rendering)."""
  out = []
  for i in range(n):
    objs = world.make_scene(0, split, i)
    rng = np.random.default_rng([0, world.SPLITS.index(split), i, 3])
    event = W.video_event(objs, rng)
    for kind, qs in (("audio", W.audio_questions(objs)),
                     ("video", W.video_questions(objs, event, rng))):
      out += [(kind, q["type"], q["question"], q["answers"][0]) for q in qs]
  return out


def test_question_answers_are_balanced():
  """Per question type (audio and video, 300 validation scenes): no answer is
  over 40% of the type's answers (yes/no: 60%), and the question text alone
  (the most frequent answer of each question on 1000 train scenes) answers
  no better than the type's most frequent answer, +5 points. World 1.3.0's
  "which object moved?" was "none" for 68% of the videos."""
  seen, by_type = {}, {}
  for kind, t, q, a in _qa_rows("train", 1000):
    seen.setdefault(q, {}).setdefault(a, 0)
    seen[q][a] += 1
    by_type.setdefault((kind, t), {}).setdefault(a, 0)
    by_type[(kind, t)][a] += 1
  counts, hits = {}, {}
  for kind, t, q, a in _qa_rows("validation", 300):
    counts.setdefault((kind, t), {}).setdefault(a, 0)
    counts[(kind, t)][a] += 1
    guess = max(seen.get(q) or by_type[(kind, t)], key=(seen.get(q) or by_type[(kind, t)]).get)
    hits[(kind, t)] = hits.get((kind, t), 0) + (guess == a)
  assert {t for k, t in counts if k == "video"} == {"moved", "event", "count", "direction",
                                                   "color"}
  for key, c in counts.items():
    total, top = sum(c.values()), max(c.values())
    bound = 0.6 if set(c) <= {"yes", "no"} else 0.4
    assert top / total <= bound, (key, c)
    assert hits[key] / total <= top / total + 0.05, (key, hits[key], c)
  moved = counts[("video", "moved")]
  assert 0.2 < moved["none"] / sum(moved.values()) < 0.4, moved  # "none" still asked
