"""Sound and motion in the embedded world: each scene's clip and video.

Pure functions of (seed, split, index) like world.py, on their own random
streams, so the scene's image, captions, questions and documents are those of
world.scene_record unchanged.

Sound. A scene sounds as one tone per object, in left-to-right order in time
(`TONE_S` of tone, then `GAP_S` of silence, from t = 0): pitch from colour
(`PITCH_HZ`), waveform from shape (`HARMONICS`: band-limited additive
synthesis, so no tone aliases), loudness from size (`LOUDNESS`), 10 ms linear
ramps at both ends. Written as 16 kHz mono 16-bit PCM WAV bytes (stdlib
`wave`). Captions name the sounding objects in time order ("a loud red
circle, then a quiet blue square."); questions ask how many sounds there are,
which shape makes the highest / lowest sound, the colour of the first sound,
whether the last one is loud.

Audio with an image (`av_item`): the scene's image with the clip of an edited
copy (one object silent, one recoloured, or unchanged), asking whether the
sound matches the picture and which object makes no sound: answers that need
both the picture and the sound.

Motion. `FRAMES` frames at the scene's image size in which one event happens
(recorded as data, `video_event`): an object moves (`MOVE` of the width
left / right / up / down, linearly over the clip), appears (absent before
frame k), or changes colour (from frame k). Captions say what happens ("the
red circle moves left."); questions ask which object moved, which way, what
colour it turns, what happens to it, how many objects there are at the start.

Held-out colour-shape pairs never appear in a train or validation clip or
video: edits and recolourings never make one.
"""
from __future__ import annotations

import dataclasses
import functools
import io
import json
import wave
from typing import Dict, List, Sequence

import numpy as np

from metalm_jax.data import world

SAMPLE_RATE = 16000
TONE_S = 0.2
GAP_S = 0.05
RAMP_S = 0.01
# Pitch by colour: geometric steps of 1.3 from 200 Hz (each a few FFT bins apart).
PITCH_HZ = {c: 200.0 * 1.3 ** k for k, c in enumerate(
    ("black", "purple", "blue", "green", "yellow", "orange", "red", "white"))}
LOUDNESS = {"large": 0.8, "small": 0.3}  # peak amplitude
LOUD_WORDS = {"large": "loud", "small": "quiet"}
MAX_HARMONICS = 16


def _harmonics(shape: str, count: int) -> np.ndarray:
  """Amplitude of harmonics 1..count of each shape's waveform."""
  k = np.arange(1, count + 1, dtype=np.float64)
  odd = (k % 2 == 1).astype(np.float64)
  table = {
      "circle": (k == 1).astype(np.float64),                        # sine
      "square": odd / k,                                            # square wave
      "triangle": odd * (-1.0) ** ((k - 1) // 2) / k ** 2,          # triangle wave
      "diamond": 1.0 / k,                                           # sawtooth
      "cross": (k <= 6).astype(np.float64),                         # buzz: 6 equal harmonics
  }
  return table[shape]


def tone(obj: world.Obj, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
  """float64 [TONE_S * rate] tone of one object, peak = its loudness (read-only)."""
  return _tone(obj.color, obj.shape, obj.size, sample_rate)


@functools.lru_cache(maxsize=None)
def _tone(color: str, shape: str, size: str, sample_rate: int) -> np.ndarray:
  n = int(round(TONE_S * sample_rate))
  f = PITCH_HZ[color]
  count = max(1, min(MAX_HARMONICS, int((sample_rate / 2 - 1) // f)))
  t = np.arange(n) / sample_rate
  amps = _harmonics(shape, count)
  wave_ = np.sum(amps[:, None] * np.sin(2 * np.pi * f * np.arange(1, count + 1)[:, None] * t),
                 axis=0)
  wave_ /= np.max(np.abs(wave_))
  ramp = int(round(RAMP_S * sample_rate))
  env = np.ones(n)
  env[:ramp] = np.linspace(0.0, 1.0, ramp, endpoint=False)
  env[n - ramp:] = np.linspace(1.0, 0.0, ramp)
  out = LOUDNESS[size] * wave_ * env
  out.flags.writeable = False
  return out


def time_order(objs: Sequence[world.Obj]) -> List[world.Obj]:
  """The objects in the order they sound: left to right."""
  return sorted(objs, key=lambda o: o.x)


def clip(objs: Sequence[world.Obj], sample_rate: int = SAMPLE_RATE) -> np.ndarray:
  """float64 waveform of the scene: its tones in time order, each followed by a gap."""
  step = int(round((TONE_S + GAP_S) * sample_rate))
  out = np.zeros(step * len(objs))
  for k, o in enumerate(time_order(objs)):
    t = tone(o, sample_rate)
    out[k * step:k * step + len(t)] = t
  return out


def wav_bytes(waveform: np.ndarray, sample_rate: int = SAMPLE_RATE) -> bytes:
  """Mono 16-bit PCM WAV of a float waveform in [-1, 1]."""
  pcm = np.round(np.clip(waveform, -1.0, 1.0) * 32767).astype("<i2")
  buf = io.BytesIO()
  with wave.open(buf, "wb") as w:
    w.setnchannels(1)
    w.setsampwidth(2)
    w.setframerate(sample_rate)
    w.writeframes(pcm.tobytes())
  return buf.getvalue()


def _name(o: world.Obj) -> str:
  return f"{o.color} {o.shape}"


def _answers(answer: str) -> List[str]:
  return [answer] * 10


def audio_captions(objs: Sequence[world.Obj]) -> List[str]:
  """Three captions of the scene's sound."""
  order = time_order(objs)
  n = len(order)
  heard = [f"a {LOUD_WORDS[o.size]} {_name(o)}" for o in order]
  first = heard[0] + "." if n == 1 else ", then ".join(heard) + "."
  count = f"{world.NUMBER_WORDS[n]} sound{'s' if n > 1 else ''}"
  if n == 1:
    second = f"one sound from {order[0].phrase()}."
  else:
    second = f"{count}, first a {_name(order[0])} and last a {_name(order[-1])}."
  third = f"the sound of {world._join([o.phrase() for o in order])} from left to right."
  return [first, second, third]


def _extreme(objs, pick) -> world.Obj | None:
  """The one object of highest (pick=max) / lowest pitch, None if tied."""
  best = pick(PITCH_HZ[o.color] for o in objs)
  hits = [o for o in objs if PITCH_HZ[o.color] == best]
  return hits[0] if len(hits) == 1 else None


def audio_questions(objs: Sequence[world.Obj]) -> List[Dict[str, object]]:
  """{question, type, answers (10)} about the sound alone."""
  order = time_order(objs)
  out = [dict(question="how many sounds are there?", type="count",
              answers=_answers(str(len(order))))]
  for word, pick in (("highest", max), ("lowest", min)):
    o = _extreme(order, pick)
    if o is not None and len(order) > 1:
      out.append(dict(question=f"what shape makes the {word} sound?", type=word,
                      answers=_answers(o.shape)))
  out.append(dict(question="what color is the first sound?", type="first",
                  answers=_answers(order[0].color)))
  out.append(dict(question="is the last sound loud?", type="loud",
                  answers=_answers("yes" if order[-1].size == "large" else "no")))
  return out


def _allowed_colors(o: world.Obj, objs: Sequence[world.Obj]) -> List[str]:
  """Colours `o` may take: another pitch, never a held-out pair, never a
  colour-shape pair the scene already has."""
  taken = {(p.color, p.shape) for p in objs}
  return [c for c in world.COLORS if c != o.color and (c, o.shape) not in world._HELDOUT
          and (c, o.shape) not in taken and PITCH_HZ[c] != PITCH_HZ[o.color]]


AV_QUESTIONS = ("does the sound match the picture?", "which object makes no sound?")


def av_item(objs: Sequence[world.Obj], rng: np.random.Generator) -> Dict[str, object]:
  """The sound of an edited copy of the scene, with questions needing the
  picture and the sound: {waveform, edit, questions, question_types, answers}.
  Edits: `silent` (one object makes no sound; scenes of 2+ objects),
  `recolor` (one object sounds at another colour's pitch), `same`."""
  objs = list(objs)
  kinds = ["same", "recolor"] + (["silent"] if len(objs) > 1 else [])
  kind = kinds[int(rng.integers(len(kinds)))]
  heard, edit = list(objs), {"kind": kind}
  if kind != "same":
    i = int(rng.integers(len(objs)))
    edit["object"] = _name(objs[i])
    if kind == "silent":
      del heard[i]
    else:
      colors = _allowed_colors(objs[i], objs)
      c = colors[int(rng.integers(len(colors)))]
      heard[i] = dataclasses.replace(objs[i], color=c)
      edit["color"] = c
  qas = [dict(question=AV_QUESTIONS[0], type="match",
              answers=_answers("yes" if kind == "same" else "no"))]
  if kind != "recolor":
    qas.append(dict(question=AV_QUESTIONS[1], type="silent",
                    answers=_answers(edit["object"] if kind == "silent" else "none")))
  return {"waveform": clip(heard), "edit": edit, "questions": [q["question"] for q in qas],
          "question_types": [q["type"] for q in qas],
          "answers": np.array([q["answers"] for q in qas], dtype=object)}


# ---------------------------------------------------------------- video
FRAMES = 4
MOVE = 0.25  # fraction of the width an object moves over the clip
EVENTS = ("move", "appear", "recolor")
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
_MARGIN = 0.08  # a moving object's centre stays this far inside the frame


def video_event(objs: Sequence[world.Obj], rng: np.random.Generator) -> Dict[str, object]:
  """What happens in the scene's video: {kind, object (index), direction |
  color, frame}."""
  kind = EVENTS[int(rng.integers(len(EVENTS)))]
  i = int(rng.integers(len(objs)))
  o = objs[i]
  event: Dict[str, object] = {"kind": kind, "object": i}
  if kind == "move":
    inside = lambda v: _MARGIN <= v <= 1 - _MARGIN
    ok = [d for d, (dx, dy) in DIRECTIONS.items()
          if inside(o.x + dx * MOVE) and inside(o.y + dy * MOVE)]
    event["direction"] = ok[int(rng.integers(len(ok)))]
  elif kind == "appear":
    event["frame"] = int(rng.integers(1, FRAMES))
  else:
    colors = _allowed_colors(o, objs)
    event["color"] = colors[int(rng.integers(len(colors)))]
    event["frame"] = int(rng.integers(1, FRAMES))
  return event


def frame_objects(objs: Sequence[world.Obj], event, frame: int) -> List[world.Obj]:
  """The objects visible in `frame` (0-based) of the video."""
  out = []
  for i, o in enumerate(objs):
    if i == event["object"]:
      if event["kind"] == "move":
        dx, dy = DIRECTIONS[event["direction"]]
        s = MOVE * frame / (FRAMES - 1)
        o = dataclasses.replace(o, x=o.x + dx * s, y=o.y + dy * s)
      elif event["kind"] == "appear" and frame < event["frame"]:
        continue
      elif event["kind"] == "recolor" and frame >= event["frame"]:
        o = dataclasses.replace(o, color=event["color"])
    out.append(o)
  return out


def video_captions(objs: Sequence[world.Obj], event) -> List[str]:
  o = objs[event["object"]]
  n = len(objs)
  if event["kind"] == "move":
    d = event["direction"]
    return [f"the {_name(o)} moves {d}.", f"{o.phrase()} moves {d}.",
            f"{world.NUMBER_WORDS[n]} object{'s' if n > 1 else ''} and the {_name(o)} "
            f"moves {d}."]
  if event["kind"] == "appear":
    return [f"a {_name(o)} appears.", f"{o.phrase()} appears.",
            f"a {_name(o)} appears and then there {'are' if n > 1 else 'is'} "
            f"{world.NUMBER_WORDS[n]}."]
  c = event["color"]
  return [f"the {_name(o)} turns {c}.", f"the {o.size} {_name(o)} changes color to {c}.",
          f"the {o.shape} changes from {o.color} to {c}."]


HAPPENS = {"move": "it moves", "appear": "it appears", "recolor": "it changes color"}


# How often "which object moved?" is asked of a video in which nothing moves:
# events are uniform, so "none" is then a third of that question's answers
# (always asking made it two thirds, and a text-only model right as often).
ASK_NONE_MOVED = 0.25


def video_questions(objs: Sequence[world.Obj], event,
                    rng: np.random.Generator) -> List[Dict[str, object]]:
  """{question, type, answers (10)} about the video. "which object moved?"
  comes with every move and with ASK_NONE_MOVED of the other events (drawn
  with `rng`), so no answer of a question type is much more frequent than
  the others."""
  o = objs[event["object"]]
  kind = event["kind"]
  out = []
  if kind == "move" or rng.random() < ASK_NONE_MOVED:
    out.append(dict(question="which object moved?", type="moved",
                    answers=_answers(_name(o) if kind == "move" else "none")))
  out += [dict(question=f"what happens to the {_name(o)}?", type="event",
               answers=_answers(HAPPENS[kind])),
          dict(question="how many objects are there at the start?", type="count",
               answers=_answers(str(len(objs) - (kind == "appear"))))]
  if kind == "move":
    out.append(dict(question=f"which way does the {_name(o)} move?", type="direction",
                    answers=_answers(event["direction"])))
  if kind == "recolor":
    out.append(dict(question=f"what color does the {_name(o)} turn?", type="color",
                    answers=_answers(event["color"])))
  return out


def av_record(seed: int, split: str, index: int, image_size: int) -> Dict[str, object]:
  """The sound and video fields of scene `index` of `split` (TFDS features of
  builders/world.py): audio (WAV bytes), audio_captions, audio_questions,
  audio_question_types, audio_answers [Q, 10]; video (FRAMES PNG bytes),
  video_event (JSON), video_captions, video_questions, video_question_types,
  video_answers [Q, 10]."""
  objs = world.make_scene(seed, split, index)
  rng = np.random.default_rng([seed, world.SPLITS.index(split), index, 3])
  aqs = audio_questions(objs)
  event = video_event(objs, rng)
  vqs = video_questions(objs, event, rng)
  frames = [world.png_bytes(world.render(frame_objects(objs, event, f), image_size))
            for f in range(FRAMES)]
  return {
      "audio": wav_bytes(clip(objs)),
      "audio_captions": audio_captions(objs),
      "audio_questions": [q["question"] for q in aqs],
      "audio_question_types": [q["type"] for q in aqs],
      "audio_answers": np.array([q["answers"] for q in aqs], dtype=object),
      "video": np.array(frames, dtype=object),
      "video_event": json.dumps(event),
      "video_captions": video_captions(objs, event),
      "video_questions": [q["question"] for q in vqs],
      "video_question_types": [q["type"] for q in vqs],
      "video_answers": np.array([q["answers"] for q in vqs], dtype=object),
  }


def av_item_of(objects_json: str, rng: np.random.Generator) -> Dict[str, object]:
  """`av_item` of a record's scene (its `objects` JSON field)."""
  return av_item([world.Obj(**o) for o in json.loads(objects_json)], rng)
