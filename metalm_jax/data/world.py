"""The embedded world: procedurally generated scenes and the text about them.

Everything is a pure function of (seed, split, index), so a data set built on
two machines is identical. A scene holds 1-4 objects (colour, shape, size,
position). From it come: a PNG image, captions, VQA questions with ten
VQAv2-style human answers (some noisy), an NLI triple, a multi-paragraph
document and an interleaved document (`interleaved`: several scenes of the
same split, each image with its captions and one question). Its sound clip
and video, with their captions and questions, come from world_av.py. Each
index also has a binding episode (`bind_episode`: five one-object pictures
whose invented names only the episode's first items tell).

Documents use, in ordinary true sentences about the scene, the words that
prompts and labels are made of (true, false, neither, question, answer,
only), but never a prompt format nor an NLI premise or hypothesis: a model
pretrained on them knows the words without having seen the tasks.

Held-out split: a fixed set of (colour, shape) pairs never appears in train or
validation; every `test_heldout` scene contains at least one of them.
"""
from __future__ import annotations

import dataclasses
import io
import json
from typing import Dict, List, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw

from metalm_jax.data.formats import BIND_NAMES  # noqa: F401  (pure Python, no cycle)

COLORS = {
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220),
    "yellow": (235, 210, 40), "purple": (140, 60, 180), "orange": (245, 140, 30),
    "white": (245, 245, 245), "black": (20, 20, 20),
}
SHAPES = ("circle", "square", "triangle", "diamond", "cross")
SIZES = ("small", "large")
NUMBER_WORDS = ("zero", "one", "two", "three", "four")
NLI_LABELS = ("entailment", "neutral", "contradiction")  # MNLI order
SPLITS = ("train", "validation", "test_heldout")
BACKGROUND = (128, 128, 128)
_COLOR_NAMES = tuple(COLORS)


def heldout_pairs() -> Tuple[Tuple[str, str], ...]:
  """One unseen colour per shape: (colour, shape) pairs kept out of training."""
  return tuple((_COLOR_NAMES[(3 * i + 1) % len(_COLOR_NAMES)], s) for i, s in enumerate(SHAPES))


_HELDOUT = frozenset(heldout_pairs())


@dataclasses.dataclass(frozen=True)
class Obj:
  color: str
  shape: str
  size: str
  x: float  # centre, fraction of the width
  y: float  # centre, fraction of the height

  def phrase(self, article="a") -> str:
    return f"{article} {self.size} {self.color} {self.shape}"


def _split_rng(seed: int, split: str, index: int) -> np.random.Generator:
  return np.random.default_rng([seed, SPLITS.index(split), index])


def make_scene(seed: int, split: str, index: int) -> List[Obj]:
  """The objects of scene `index` of `split` (deterministic)."""
  if split not in SPLITS:
    raise ValueError(f"split={split!r}: expected one of {SPLITS}")
  rng = _split_rng(seed, split, index)
  n = int(rng.integers(1, 5))
  heldout = split == "test_heldout"
  must_hold = int(rng.integers(n)) if heldout else -1
  objs, used = [], set()
  for k in range(n):
    for _ in range(100):
      if k == must_hold:
        color, shape = heldout_pairs()[int(rng.integers(len(SHAPES)))]
      else:
        color = _COLOR_NAMES[int(rng.integers(len(_COLOR_NAMES)))]
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        if (color, shape) in _HELDOUT:
          continue  # held-out pairs appear only where forced
      if (color, shape) not in used:
        break
    used.add((color, shape))
    size = SIZES[int(rng.integers(2))]
    # Place centres on a jittered 4x4 grid so objects rarely overlap.
    cells = [c for c in range(16) if all(_cell(o) != c for o in objs)]
    c = cells[int(rng.integers(len(cells)))]
    x = (c % 4 + 0.5 + rng.uniform(-0.15, 0.15)) / 4
    y = (c // 4 + 0.5 + rng.uniform(-0.15, 0.15)) / 4
    objs.append(Obj(color, shape, size, float(x), float(y)))
  return objs


def _cell(o: Obj) -> int:
  return min(int(o.y * 4), 3) * 4 + min(int(o.x * 4), 3)


def render(objs: Sequence[Obj], image_size: int) -> np.ndarray:
  """uint8 [S, S, 3] picture of the scene (PIL, no anti-aliasing)."""
  img = Image.new("RGB", (image_size, image_size), BACKGROUND)
  draw = ImageDraw.Draw(img)
  for o in objs:
    r = image_size * (0.11 if o.size == "large" else 0.06)
    cx, cy = o.x * image_size, o.y * image_size
    fill = COLORS[o.color]
    box = (cx - r, cy - r, cx + r, cy + r)
    if o.shape == "circle":
      draw.ellipse(box, fill=fill)
    elif o.shape == "square":
      draw.rectangle(box, fill=fill)
    elif o.shape == "triangle":
      draw.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=fill)
    elif o.shape == "diamond":
      draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=fill)
    else:  # cross
      w = r / 3
      draw.rectangle((cx - r, cy - w, cx + r, cy + w), fill=fill)
      draw.rectangle((cx - w, cy - r, cx + w, cy + r), fill=fill)
  return np.asarray(img, dtype=np.uint8)


def png_bytes(image: np.ndarray) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, format="PNG")
  return buf.getvalue()


def relation(a: Obj, b: Obj) -> str:
  """The dominant spatial relation of a to b."""
  dx, dy = a.x - b.x, a.y - b.y
  if abs(dx) >= abs(dy):
    return "to the left of" if dx < 0 else "to the right of"
  return "above" if dy < 0 else "below"


def _join(phrases: Sequence[str]) -> str:
  return phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]


def captions(objs: Sequence[Obj], rng: np.random.Generator) -> List[str]:
  """Three captions in different templates, COCO-style (several per image)."""
  n = len(objs)
  listing = _join([o.phrase() for o in objs])
  out = [f"{listing} on a gray background."]
  if n == 1:
    out.append(f"a picture of {objs[0].phrase()}.")
    out.append(f"there is one {objs[0].color} {objs[0].shape}.")
  else:
    a, b = objs[int(rng.integers(n))], objs[0]
    if a is b:
      b = objs[1]
    out.append(f"{NUMBER_WORDS[n]} objects: {listing}.")
    out.append(f"{a.phrase()} {relation(a, b)} {b.phrase('the')}.")
  return out


def _noisy_answers(correct: str, wrong: Sequence[str], rng: np.random.Generator) -> List[str]:
  """Ten human answers: mostly `correct`, 0-3 of them noisy."""
  answers = [correct] * 10
  for k in rng.choice(10, size=int(rng.integers(0, 4)), replace=False):
    answers[int(k)] = str(wrong[int(rng.integers(len(wrong)))])
  return answers


def questions(objs: Sequence[Obj], rng: np.random.Generator) -> List[Dict[str, object]]:
  """VQA items: {question, type, answers (10)} for colour, shape, count,
  yes/no and spatial relation."""
  out = []
  n = len(objs)
  o = objs[int(rng.integers(n))]
  same_shape = [p for p in objs if p.shape == o.shape]
  if len(same_shape) == 1:
    out.append(dict(question=f"what color is the {o.shape}?", type="color",
                    answers=_noisy_answers(o.color, [c for c in COLORS if c != o.color], rng)))
  same_color = [p for p in objs if p.color == o.color]
  if len(same_color) == 1:
    out.append(dict(question=f"what shape is the {o.color} object?", type="shape",
                    answers=_noisy_answers(o.shape, [s for s in SHAPES if s != o.shape], rng)))
  out.append(dict(question="how many objects are there?", type="count",
                  answers=_noisy_answers(str(n), [str(k) for k in range(1, 5) if k != n], rng)))
  color = _COLOR_NAMES[int(rng.integers(len(_COLOR_NAMES)))]
  shape = SHAPES[int(rng.integers(len(SHAPES)))]
  present = any(p.color == color and p.shape == shape for p in objs)
  yes = "yes" if present else "no"
  out.append(dict(question=f"is there a {color} {shape}?", type="yes/no",
                  answers=_noisy_answers(yes, ["no" if present else "yes"], rng)))
  if n >= 2:
    i, j = rng.choice(n, size=2, replace=False)
    a, b = objs[int(i)], objs[int(j)]
    rel = relation(a, b)
    asked = ("to the left of", "to the right of", "above", "below")[int(rng.integers(4))]
    ans = "yes" if asked == rel else "no"
    out.append(dict(question=f"is the {a.color} {a.shape} {asked} the {b.color} {b.shape}?",
                    type="spatial", answers=_noisy_answers(ans, ["no" if ans == "yes" else "yes"],
                                                           rng)))
  return out


def nli_triple(objs: Sequence[Obj], rng: np.random.Generator) -> Dict[str, object]:
  """An NLI triple whose label needs premise and hypothesis together.

  Premise: some of the objects ("the picture shows ...": others may be there
  too) or all of them ("the picture shows only ..."). Hypothesis, one of three
  templates:
    "there is a C S."  entailment if the premise names a C S; else
                       contradiction after "only", neutral without it;
    "there is no C S." contradiction if the premise names a C S; else
                       entailment after "only", neutral without it;
    "the Z S is C."    about the one Z S the premise names: entailment if it
                       is C, contradiction if not; about a Z S the premise
                       does not name (no "only"): neutral.
  The label is drawn first (uniform), then the premise kind (neutral needs
  one without "only") and a template that yields the label, so every template
  carries every label: the hypothesis alone does not tell it."""
  n = len(objs)
  label = NLI_LABELS[int(rng.integers(3))]
  only = label != "neutral" and bool(rng.integers(2))
  mentioned = list(objs) if only else list(objs[:int(rng.integers(1, n + 1))])
  premise = (f"the picture shows {'only ' if only else ''}"
             f"{_join([o.phrase() for o in mentioned])}.")
  named = {(o.color, o.shape) for o in mentioned}
  unnamed = [(c, s) for c in COLORS for s in SHAPES if (c, s) not in named]
  sized = {}
  for o in mentioned:
    sized.setdefault((o.size, o.shape), []).append(o)
  unique = [v[0] for v in sized.values() if len(v) == 1]

  def pick(seq):
    return seq[int(rng.integers(len(seq)))]

  def named_pair():
    o = pick(mentioned)
    return o.color, o.shape

  def about(o, same):  # "the Z S is C." with C its colour (same) or another
    color = o.color if same else pick([c for c in COLORS if c != o.color])
    return f"the {o.size} {o.shape} is {color}."

  def unnamed_size_shape():
    z, s = pick([(z, s) for z in SIZES for s in SHAPES if (z, s) not in sized])
    return f"the {z} {s} is {pick(_COLOR_NAMES)}."

  options = {  # label -> hypothesis makers available for this premise
      "entailment": [lambda: "there is a %s %s." % named_pair()]
                    + ([lambda: "there is no %s %s." % pick(unnamed)] if only else [])
                    + ([lambda: about(pick(unique), True)] if unique else []),
      "contradiction": [lambda: "there is no %s %s." % named_pair()]
                       + ([lambda: "there is a %s %s." % pick(unnamed)] if only else [])
                       + ([lambda: about(pick(unique), False)] if unique else []),
      "neutral": [lambda: "there is a %s %s." % pick(unnamed),
                  lambda: "there is no %s %s." % pick(unnamed), unnamed_size_shape],
  }[label]
  return dict(premise=premise, hypothesis=pick(options)(), label=label)


def vocabulary_sentence(objs: Sequence[Obj], rng: np.random.Generator) -> str:
  """A true sentence about the scene with one of the words true, false,
  neither, only, question, answer (kind drawn with `rng`). Never an NLI
  hypothesis ("there is a C S.", "there is no C S.", "the Z S is C.") nor a
  prompt."""
  n = len(objs)
  o = objs[int(rng.integers(n))]
  name = f"{o.color} {o.shape}"
  pick = lambda seq: seq[int(rng.integers(len(seq)))]
  kind = int(rng.integers(6))
  if kind == 0:
    return f"it is true that the {name} is {o.size}."
  if kind == 1:
    present = {(p.color, p.shape) for p in objs}
    c, s = pick([(c, s) for c in COLORS for s in SHAPES
                 if (c, s) not in present and (c, s) not in _HELDOUT])
    return f"it is false that the scene has a {c} {s}."
  if kind == 2:
    if n == 1:
      a, b = rng.choice([c for c in COLORS if c != o.color], size=2, replace=False)
      return f"the {o.shape} is neither {a} nor {b}."
    p = pick([p for p in objs if p is not o])
    color = pick([c for c in COLORS if c not in (o.color, p.color)])
    return f"neither the {name} nor the {p.color} {p.shape} is {color}."
  if kind == 3:
    k = sum(p.color == o.color for p in objs)
    return f"only {NUMBER_WORDS[k]} of the shapes {'is' if k == 1 else 'are'} {o.color}."
  if kind == 4 and sum(p.shape == o.shape for p in objs) == 1:
    return f"if you ask what color the {o.shape} is, the answer is {o.color}."
  return f"a question about the number of shapes has the answer {NUMBER_WORDS[n]}."


def document(objs: Sequence[Obj], rng: np.random.Generator, paragraphs: int) -> str:
  """Several paragraphs (blank-line separated) of sentences about the scene;
  each paragraph after the first holds two `vocabulary_sentence`s."""
  n = len(objs)
  paras = []
  intro = [f"this picture has {NUMBER_WORDS[n]} object{'s' if n > 1 else ''}.",
           "the background is gray."]
  intro.append(f"we can see {_join([o.phrase() for o in objs])}.")
  paras.append(intro)
  for p in range(1, paragraphs):
    sents = []
    for o in rng.permutation(n):
      o = objs[int(o)]
      col = "left" if o.x < 0.5 else "right"
      row = "top" if o.y < 0.5 else "bottom"
      kind = (p + int(rng.integers(3))) % 3
      if kind == 0:
        sents.append(f"the {o.color} {o.shape} is {o.size} and sits in the {row} {col} part.")
      elif kind == 1:
        sents.append(f"near the {row} there is {o.phrase()}.")
      else:
        sents.append(f"one of the shapes is a {o.shape} painted {o.color}.")
      if n > 1:
        other = objs[int(rng.integers(n))]
        if other is not o:
          sents.append(f"the {o.color} {o.shape} is {relation(o, other)} the {other.color} "
                       f"{other.shape}.")
    sents.append(f"in total there are {NUMBER_WORDS[n]} shapes in this scene.")
    for _ in range(2):
      sents.insert(int(rng.integers(len(sents) + 1)), vocabulary_sentence(objs, rng))
    paras.append(sents)
  return "\n\n".join(" ".join(s) for s in paras)


def scene_record(seed: int, split: str, index: int, image_size: int,
                 doc_paragraphs: int) -> Dict[str, object]:
  """Everything derived from one scene, as plain Python (PNG bytes image)."""
  objs = make_scene(seed, split, index)
  rng = np.random.default_rng([seed, SPLITS.index(split), index, 1])
  qas = questions(objs, rng)
  nli = nli_triple(objs, rng)
  return {
      "id": index,
      "image": png_bytes(render(objs, image_size)),
      "captions": captions(objs, rng),
      "questions": [q["question"] for q in qas],
      "question_types": [q["type"] for q in qas],
      "answers": np.array([q["answers"] for q in qas], dtype=object),
      "premise": nli["premise"],
      "hypothesis": nli["hypothesis"],
      "label": NLI_LABELS.index(nli["label"]),
      "document": document(objs, rng, doc_paragraphs),
      "objects": json.dumps([dataclasses.asdict(o) for o in objs]),
  }


def interleaved(seed: int, split: str, index: int, num_scenes: int, num_images: int,
                image_size: int) -> Dict[str, object]:
  """An interleaved document of `split`: scene `index`, then `num_images` - 1
  other scenes of the same split (distinct indices below `num_scenes`, drawn
  from (seed, split, index)), each image with its three captions and one of
  its questions with the ten answers. Only scenes of `split` appear, so a
  train document never shows a validation or held-out image or pair.

  Fields: doc_ids [N] scene indices, doc_images [N] PNG bytes, doc_captions
  [N, 3], doc_questions [N], doc_answers [N, 10]."""
  if not 0 <= index < num_scenes:
    raise ValueError(f"index={index} is not a scene of a split of num_scenes={num_scenes}")
  if num_images < 1:
    raise ValueError(f"num_images={num_images} must be >= 1")
  rng = np.random.default_rng([seed, SPLITS.index(split), index, 2])
  others = [int(j) for j in rng.permutation(num_scenes) if j != index][:num_images - 1]
  recs = [scene_record(seed, split, j, image_size, 1) for j in [index] + others]
  picks = [int(rng.integers(len(r["questions"]))) for r in recs]
  return {
      "doc_ids": np.array([r["id"] for r in recs], np.int64),
      "doc_images": np.array([r["image"] for r in recs], dtype=object),
      "doc_captions": np.array([r["captions"] for r in recs], dtype=object),
      "doc_questions": [r["questions"][k] for r, k in zip(recs, picks)],
      "doc_answers": np.array([r["answers"][k] for r, k in zip(recs, picks)], dtype=object),
  }


BIND_ITEMS = 5  # four demonstrations, then the query


def bind_episode(seed: int, split: str, index: int, image_size: int) -> Dict[str, object]:
  """A binding episode of `split`: two shapes (its categories) get two of
  BIND_NAMES, drawn per episode, so only the episode tells which is which.
  Five one-object pictures (colour, size, position drawn; held-out
  colour-shape pairs never in train or validation, the query's always one
  in test_heldout): items 0-3 demonstrate (0 and 1 one of each category, in
  random order; 2 and 3 drawn), item 4 is the query (category drawn).

  Fields: bind_images [5] PNG bytes, bind_phrases [5] ("a large red
  circle."), bind_labels [5] (index into BIND_NAMES of each item's name)."""
  if split not in SPLITS:
    raise ValueError(f"split={split!r}: expected one of {SPLITS}")
  rng = np.random.default_rng([seed, SPLITS.index(split), index, 4])
  shapes = [SHAPES[int(k)] for k in rng.choice(len(SHAPES), size=2, replace=False)]
  names = [int(k) for k in rng.choice(len(BIND_NAMES), size=2, replace=False)]
  cats = [int(c) for c in rng.permutation(2)] + [int(c) for c in rng.integers(2, size=3)]
  images, phrases = [], []
  for k, cat in enumerate(cats):
    shape = shapes[cat]
    if split == "test_heldout" and k == BIND_ITEMS - 1:
      color = dict((s, c) for c, s in heldout_pairs())[shape]
    else:
      colors = [c for c in _COLOR_NAMES if split == "test_heldout" or (c, shape) not in _HELDOUT]
      color = colors[int(rng.integers(len(colors)))]
    x, y = rng.uniform(0.25, 0.75, size=2)
    o = Obj(color, shape, SIZES[int(rng.integers(2))], float(x), float(y))
    images.append(png_bytes(render([o], image_size)))
    phrases.append(o.phrase() + ".")
  return {"bind_images": np.array(images, dtype=object), "bind_phrases": phrases,
          "bind_labels": np.array([names[c] for c in cats], np.int64)}
