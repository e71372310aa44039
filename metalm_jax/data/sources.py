"""Named data sources: which TFDS data set a mixture entry reads, which task
lays it out, and how its records map to the task's canonical fields.

Canonical fields per task:
    caption: image (bytes or array), captions (list[str])
    audio_caption: audio (encoded file bytes), captions
    video_caption: video (encoded file bytes), captions
    vqa:     image, question (str), answers (list[str], VQAv2-style 10)
    text:    text (str; paragraphs separated by blank lines)
    nli:     premise, hypothesis (str), label (0 entailment, 1 neutral,
             2 contradiction; anything else is skipped and counted)
    pair:    image_left, image_right, sentence (str), label (0 true, 1 false)
    interleaved: items (list of {image, captions, question, answers}, in
             document order)
    episode_image / episode_text: items (list of {image, text, label}:
             demonstrations, then the query; label indexes formats.BIND_NAMES)
    text_qa: context, question (str), answers (list with the one answer)
    audio_caption / video_caption: audio (WAV bytes) / video (encoded
             frames), captions; audio_qa / video_qa: audio / video,
             question, answers; audio_image_qa: image, audio, question,
             answers (media/ decodes audio and video)

Finetuning variants (`*_prompted`, `*_instruct`, `world_pair`) and the
multitask text clusters (`world_text_qa`, `world_count`, `world_attribute`)
are at the end. The source sets of the claims' measurements (docs/claims.md)
are named here: ZERO_SHOT_VL_SOURCES, LANGUAGE_SOURCES, MULTITASK_SOURCES.
Your own data sets (docs/your-data.md) are not registered here: the
registry's fallback (data/user_sets.py) answers their names, NAME_caption,
NAME_vqa, NAME_text, ..., and reads them from the data dir.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import numpy as np

from metalm_jax.data.builders.common import as_str
from metalm_jax.registry import Registry



def _user_source(name: str):
  """The sources of your own data sets (NAME_caption, ...; data/user_sets.py)."""
  from metalm_jax.data import user_sets
  return user_sets.source(name)


SOURCES = Registry("data source", fallback=_user_source)


@dataclasses.dataclass(frozen=True)
class Source:
  task: str
  dataset: Callable[[Any], str]        # data_cfg -> tfds name ("name/config")
  splits: Mapping[str, str]            # pipeline split -> tfds split
  extract: Callable[[Mapping[str, Any], np.random.Generator], Dict[str, Any]]
  embedded: bool = False               # the embedded world (prepared on first use)
  module: str = ""                     # module defining a catalogue builder (imported first)
  # (data_cfg, tfds split) -> random-access records, for data sets read from
  # their folder rather than by tfds name (your own data: data/user_sets.py)
  read: Optional[Callable[[Any, str], Any]] = None
  # The record fields `extract` reads: only these are deserialised
  # (records.FieldRecords; reading another raises naming it). () = all.
  fields: Tuple[str, ...] = ()


def _world_name(data_cfg) -> str:
  return f"metalm_world/{data_cfg.world}"


_WORLD_SPLITS = {"train": "train", "validation": "validation", "test": "test_heldout",
                 "test_heldout": "test_heldout"}


def _captions(r, rng):
  return {"image": r["image"], "captions": [as_str(c) for c in r["captions"]]}


def _media_captions(field):
  def extract(r, rng):
    return {field: r[field], "captions": [as_str(c) for c in r["captions"]]}
  return extract


def _world_vqa(r, rng):
  qs = list(r["questions"])
  if not qs:
    return {"image": r["image"], "question": "", "answers": []}
  k = int(rng.integers(len(qs)))
  return {"image": r["image"], "question": as_str(qs[k]),
          "answers": [as_str(a) for a in np.asarray(r["answers"])[k]]}


def _vqav2(r, rng):
  return {"image": r["image"], "question": as_str(r["question"]),
          "answers": [as_str(a) for a in r["answers"]]}


def _document(field):
  def extract(r, rng):
    return {"text": as_str(r[field])}
  return extract


def _nli(r, rng):
  return {"premise": as_str(r["premise"]), "hypothesis": as_str(r["hypothesis"]),
          "label": int(r["label"])}


def _world_interleaved(r, rng):
  """The record's interleaved document (world.interleaved) as items."""
  return {"items": [
      {"image": img, "captions": [as_str(c) for c in caps], "question": as_str(q),
       "answers": [as_str(a) for a in ans]}
      for img, caps, q, ans in zip(r["doc_images"], np.asarray(r["doc_captions"]),
                                   r["doc_questions"], np.asarray(r["doc_answers"]))]}


def _world_instructions(r, rng):
  """Instruction-phrased text about the record's scene, for the `text` task:
  one paragraph per question (the first caption as context, a VQA template of
  formats.py drawn per paragraph, the majority answer) and one asking for a
  summary (the document's first paragraph, a caption template or
  CAPTION_PROMPT, a caption). Each paragraph ends with its answer, so the
  paragraph end (<eop>, or </s> at the end) follows an answer as `</s>`
  follows it in rows and prompts."""
  from metalm_jax.data import formats
  caps = [as_str(c) for c in r["captions"]]
  paras = []
  for q, ans in zip(r["questions"], np.asarray(r["answers"])):
    template = formats.VQA_TEMPLATES[int(rng.integers(len(formats.VQA_TEMPLATES)))]
    answer = formats.majority_answer([as_str(a) for a in ans])
    paras.append(f"{caps[0]} {template.format(question=as_str(q))} {answer}")
  summary = (formats.CAPTION_PROMPT,) + formats.CAPTION_TEMPLATES
  intro = as_str(r["document"]).split("\n\n")[0]
  paras.append(f"{intro} {summary[int(rng.integers(len(summary)))]} "
               f"{caps[int(rng.integers(len(caps)))]}")
  order = rng.permutation(len(paras))
  return {"text": "\n\n".join(paras[int(i)] for i in order)}


def register(name: str, source: Source) -> None:
  SOURCES.register(name)(source)


register("world_caption", Source("caption", _world_name, _WORLD_SPLITS, _captions, True,
                                fields=("image", "captions")))
register("world_vqa", Source("vqa", _world_name, _WORLD_SPLITS, _world_vqa, True,
                            fields=("image", "questions", "answers")))
register("world_text", Source("text", _world_name, _WORLD_SPLITS, _document("document"), True,
                             fields=("document",)))
register("world_nli", Source("nli", _world_name, _WORLD_SPLITS, _nli, True,
                            fields=("premise", "hypothesis", "label")))
register("world_interleaved", Source("interleaved", _world_name, _WORLD_SPLITS,
                                     _world_interleaved, True,
                                     fields=("doc_images", "doc_captions", "doc_questions",
                                             "doc_answers")))
register("world_instructions", Source("text", _world_name, _WORLD_SPLITS,
                                      _world_instructions, True,
                                      fields=("captions", "questions", "answers", "document")))


def _world_bind(r, rng):
  """The record's binding episode (world.bind_episode) as items."""
  return {"items": [{"image": img, "text": as_str(p), "label": int(lab)}
                    for img, p, lab in zip(r["bind_images"], r["bind_phrases"],
                                           np.asarray(r["bind_labels"]))]}


_BIND_FIELDS = ("bind_images", "bind_phrases", "bind_labels")
register("world_bind", Source("episode_image", _world_name, _WORLD_SPLITS, _world_bind, True,
                              fields=_BIND_FIELDS))
register("world_bind_text", Source("episode_text", _world_name, _WORLD_SPLITS, _world_bind, True,
                                   fields=_BIND_FIELDS))

# Pretraining mixtures whose models are measured zero-shot (docs/claims.md):
# none of their text holds a VQA or caption prompt (world_instructions and
# world_interleaved do); and the language sources of a model tuned on
# MULTITASK_SOURCES with NLI held out: no NLI example, template or label answer.
ZERO_SHOT_VL_SOURCES = ("world_caption", "world_text", "world_bind")
LANGUAGE_SOURCES = ("world_text", "world_bind_text")
MULTITASK_SOURCES = ("world_text_qa", "world_count", "world_attribute")
# ---------------------------------------------------------------- sound and motion
# The embedded world's clips and videos (world_av.py).

def _world_av_captions(kind):
  def extract(r, rng):
    return {kind: r[kind], "captions": [as_str(c) for c in r[f"{kind}_captions"]]}
  return extract


def _world_av_qa(kind):
  """One of the record's `kind` questions (drawn) with its ten answers."""
  def extract(r, rng):
    qs = list(r[f"{kind}_questions"])
    if not qs:
      return {kind: r[kind], "question": "", "answers": []}
    k = int(rng.integers(len(qs)))
    return {kind: r[kind], "question": as_str(qs[k]),
            "answers": [as_str(a) for a in np.asarray(r[f"{kind}_answers"])[k]]}
  return extract


def _world_audio_image_qa(r, rng):
  """The scene's image with the sound of an edited copy (world_av.av_item,
  drawn with `rng`) and one of its questions, which need both."""
  from metalm_jax.data import world_av
  item = world_av.av_item_of(as_str(r["objects"]), rng)
  k = int(rng.integers(len(item["questions"])))
  return {"image": r["image"], "audio": world_av.wav_bytes(item["waveform"]),
          "question": item["questions"][k], "answers": list(item["answers"][k])}


for _kind in ("audio", "video"):
  register(f"world_{_kind}_caption", Source(f"{_kind}_caption", _world_name, _WORLD_SPLITS,
                                            _world_av_captions(_kind), True,
                                            fields=(_kind, f"{_kind}_captions")))
  register(f"world_{_kind}_qa", Source(f"{_kind}_qa", _world_name, _WORLD_SPLITS,
                                       _world_av_qa(_kind), True,
                                       fields=(_kind, f"{_kind}_questions", f"{_kind}_answers")))
register("world_audio_image_qa", Source("audio_image_qa", _world_name, _WORLD_SPLITS,
                                        _world_audio_image_qa, True, fields=("image", "objects")))
register("coco_caption", Source("caption", lambda c: "metalm_coco_karpathy",
                                {"train": "train", "validation": "validation", "test": "test"},
                                _captions))
register("vqav2", Source("vqa", lambda c: "metalm_vqav2",
                         {"train": "train", "validation": "validation"}, _vqav2))
register("text_corpus", Source("text", lambda c: "metalm_text_corpus",
                               {"train": "train", "validation": "validation"},
                               _document("text")))
# Real audio / video captions (data/builders/audio_captions.py, msrvtt.py):
# encoded file bytes, decoded by media/audio.py / media/video.py in the pipeline.
register("audio_captions", Source("audio_caption", lambda c: "metalm_audio_captions",
                                  {"train": "train", "validation": "validation",
                                   "test": "test"},
                                  _media_captions("audio")))
register("msrvtt_caption", Source("video_caption", lambda c: "metalm_msrvtt",
                                  {"train": "train", "validation": "validation",
                                   "test": "test"},
                                  _media_captions("video")))
register("mnli", Source("nli", lambda c: "glue/mnli",
                        {"train": "train", "validation": "validation_matched",
                         "test": "validation_mismatched"}, _nli,
                        module="tensorflow_datasets.text.glue"))


def tfds_split(source_name: str, split: str) -> str:
  src = SOURCES.get(source_name)
  if split not in src.splits:
    raise ValueError(f"split={split!r} is not available for data source {source_name!r}; "
                     f"known: {sorted(src.splits)}")
  return src.splits[split]


# ---------------------------------------------------------------- finetuning
# Same records, finetuning layouts (tasks.py): "caption:" prompt, instruction
# templates, and two-image statements over the embedded world.

def _variant(name: str, base: str, task: str) -> None:
  """`base`'s records (same extract, same fields) in another task's layout."""
  register(name, dataclasses.replace(SOURCES.get(base), task=task))


for _base in ("world_caption", "coco_caption"):
  _variant(f"{_base}_prompted", _base, "caption_prompted")
for _kind in ("audio", "video"):
  _variant(f"world_{_kind}_caption_prompted", f"world_{_kind}_caption",
           f"{_kind}_caption_prompted")
for _base, _task in (("world_caption", "caption_instruct"), ("coco_caption", "caption_instruct"),
                     ("world_vqa", "vqa_instruct"), ("vqav2", "vqa_instruct"),
                     ("world_nli", "nli_instruct"), ("mnli", "nli_instruct")):
  _variant(f"{_base}_instruct", _base, _task)


def _edited_scene(objs, rng):
  """A copy of the scene with one object dropped or recoloured (or unchanged)."""
  from metalm_jax.data import world
  objs = list(objs)
  kind = int(rng.integers(3))
  if kind == 0 and len(objs) > 1:
    del objs[int(rng.integers(len(objs)))]
  elif kind <= 1:
    i = int(rng.integers(len(objs)))
    colors = [c for c in world.COLORS if c != objs[i].color]
    objs[i] = dataclasses.replace(objs[i], color=colors[int(rng.integers(len(colors)))])
  return objs


def _world_pair(r, rng):
  """Canonical pair fields: image_left, image_right, sentence, label (0 true,
  1 false). The right image is an edited copy of the record's scene."""
  import io
  import json
  from PIL import Image
  from metalm_jax.data import world
  left = [world.Obj(**o) for o in json.loads(as_str(r["objects"]))]
  right = _edited_scene(left, rng)
  size = Image.open(io.BytesIO(r["image"])).size[0]
  has = lambda objs, c, s: any(o.color == c and o.shape == s for o in objs)
  pick = (left + right)[int(rng.integers(len(left) + len(right)))]
  c, s = pick.color, pick.shape
  kind = int(rng.integers(4))
  if kind == 0:
    sentence, true = "the left image has more objects than the right image.", len(left) > len(right)
  elif kind == 1:
    sentence, true = "the two images show the same number of objects.", len(left) == len(right)
  elif kind == 2:
    sentence, true = f"both images contain a {c} {s}.", has(left, c, s) and has(right, c, s)
  else:
    sentence, true = f"the right image contains a {c} {s}.", has(right, c, s)
  return {"image_left": r["image"], "image_right": world.render(right, size),
          "sentence": sentence, "label": 0 if true else 1}


register("world_pair", Source("pair", _world_name, _WORLD_SPLITS, _world_pair, True,
                             fields=("image", "objects")))


# ---------------------------------------------------------------- multitask text
# Three clusters of questions about a text (task text_qa), for multitask
# tuning with NLI held out: each answer is in its context; no context or
# answer is an NLI premise, hypothesis or label word.

def _objects(r):
  from metalm_jax.data import world
  return [world.Obj(**o) for o in json.loads(as_str(r["objects"]))]


def _pick(seq, rng):
  return seq[int(rng.integers(len(seq)))]


def _qa(context, question, answer):
  return {"context": context, "question": question, "answers": [answer]}


def _world_text_qa(r, rng):
  """Colour or shape of an object its colour or shape names alone (or, if
  none is, its size), read off the document's first paragraph (all the
  objects); or a relation, read off a caption of two of them."""
  from metalm_jax.data import world
  objs = _objects(r)
  kind = int(rng.integers(3))
  if kind == 2 and len(objs) > 1:
    a, b = (objs[int(i)] for i in rng.choice(len(objs), size=2, replace=False))
    rel = world.relation(a, b)
    return _qa(f"{a.phrase()} {rel} {b.phrase('the')}.",
               f"which object is {rel} the {b.color} {b.shape}?", f"{a.color} {a.shape}")
  context = as_str(r["document"]).split("\n\n")[0]
  by_shape = [o for o in objs if sum(p.shape == o.shape for p in objs) == 1]
  by_color = [o for o in objs if sum(p.color == o.color for p in objs) == 1]
  if by_color and (kind == 1 or not by_shape):
    o = _pick(by_color, rng)
    return _qa(context, f"what shape is the {o.color} object?", o.shape)
  if by_shape:
    o = _pick(by_shape, rng)
    return _qa(context, f"what color is the {o.shape}?", o.color)
  o = _pick(objs, rng)
  question = _pick(("what size is the {}?", "is the {} large or small?", "how big is the {}?"),
                   rng)
  return _qa(context, question.format(f"{o.color} {o.shape}"), o.size)


def _plural(shape: str) -> str:
  return shape + ("es" if shape.endswith("s") else "s")


def _world_count(r, rng):
  """How many objects / of a shape, colour or size, from a list of the objects
  in words (in a drawn order); the answer in digits, as VQA counts are."""
  from metalm_jax.data import world
  objs = _objects(r)
  objs = [objs[int(i)] for i in rng.permutation(len(objs))]
  context = f"here we have {world._join([o.phrase() for o in objs])}."
  kind = int(rng.integers(4))
  if kind == 0:
    return _qa(context, "how many objects are there?", str(len(objs)))
  if kind == 3:
    size = _pick(world.SIZES, rng)
    return _qa(context, f"how many {size} shapes are there?",
               str(sum(o.size == size for o in objs)))
  seen = bool(rng.integers(2))  # half the time an attribute the scene has
  if kind == 1:
    shape = _pick([o.shape for o in objs] if seen else world.SHAPES, rng)
    return _qa(context, f"how many {_plural(shape)} are there?",
               str(sum(o.shape == shape for o in objs)))
  color = _pick([o.color for o in objs] if seen else tuple(world.COLORS), rng)
  return _qa(context, f"how many {color} shapes are there?",
             str(sum(o.color == color for o in objs)))


def _world_attribute(r, rng):
  """The size of an object named by colour and shape (three phrasings), from
  sentences that give each object's size."""
  objs = _objects(r)
  order = [objs[int(i)] for i in rng.permutation(len(objs))]
  context = " ".join(f"the {o.color} {o.shape} is {o.size}." for o in order)
  o = _pick(objs, rng)
  question = _pick(("what size is the {}?", "is the {} large or small?", "how big is the {}?"),
                   rng)
  return _qa(context, question.format(f"{o.color} {o.shape}"), o.size)


for _name, _extract, _fields in (("world_text_qa", _world_text_qa, ("document", "objects")),
                                 ("world_count", _world_count, ("objects",)),
                                 ("world_attribute", _world_attribute, ("objects",))):
  register(_name, Source("text_qa", _world_name, _WORLD_SPLITS, _extract, True, fields=_fields))

for _base in ("world_nli", "mnli"):
  _variant(f"{_base}_encoded", _base, "nli_encoded")
