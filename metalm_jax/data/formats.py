"""Task formats: the one definition of what each task's training rows and
evaluation prompts look like. The pipeline (data/tasks.py) lays rows out from
them, the evaluators (evaluate/evaluators/examples.py) build prompts from
them, the Predictor takes its prompts from here. Pure Python: no model, no
tokenizer, no training stack.

A row or prompt, left to right ([..] = docked, * = trained in a row):

    <s> (<image> [image] </image>)* (<audio> [clip] </audio>)*
        (<video> [clip] </video>)*  [encoded text]  prompt  answer* </s>*

  images    image fields, each docked on its own item of the vision encoder;
  audio, video   sound-clip / video fields, each on its own item of the
            audio ("whisper") / video encoder (models/modalities/: kinds, loaders);
  encoded   a template of the text for the text encoder
            (config.data.spans.encoder): split over consecutive items of
            max_len tokens (`encoded_items="split"`; plain tokens when the
            run has no text encoder), or one item ("one"; a text encoder is
            required);
  prompt    a template filled with the fields (tokenised on its own); with
            several templates (instruction tuning) training draws one per
            row, evaluation uses `eval_prompt` (default: the first);
  answer    the label word (`labels`), the most frequent of `answers`, or one
            of `captions` (drawn per row in training, the first in
            evaluation); tokenised on its own, then `</s>`.

In-context prompts (evaluate/prompts.py `icl_parts`) use exactly these
separators: `<s>`, then each demonstration laid out as its training row
without the row's `<s>` (images, encoded text, prompt, answer, `</s>`), then
the query as its evaluation prompt without `<s>`:

    <s> (demo inputs  prompt  answer </s>)*  query inputs  prompt

Binding episodes (tasks episode_image / episode_text, item formats in
EPISODE_ITEM_FORMATS) are trained as such prompts of all their items, the
query's answer trained too.

When a row is too short, the encoded text is cut first, then the prompt
(leaving the answer `answer_room` positions, default all of it), then the
answer (counted as truncated_text). `caption` (pretraining) has no prompt
and may send a caption prefix through the text encoder (tasks.caption_task);
zero-shot evaluation prompts it with CAPTION_PROMPT (paper section 5).
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from metalm_jax.registry import Registry

FORMATS = Registry("task format")

CAPTION_PROMPT = "Summarize this image:"  # zero-shot captioning (paper)
AUDIO_CAPTION_PROMPT = "Describe this sound:"  # zero-shot audio captioning
VIDEO_CAPTION_PROMPT = "Describe this video:"  # zero-shot video captioning
VQA_TEMPLATE = "question: {question} answer:"
NLI_TEMPLATE = "question: {hypothesis} true, false or neither? answer:"
NLI_WORDS = ("true", "neither", "false")  # entailment, neutral, contradiction
PAIR_WORDS = ("true", "false")
CAPTION_TEMPLATES = ("caption:", "summarize this image:", "describe the picture:")
VQA_TEMPLATES = (VQA_TEMPLATE, "{question} answer briefly:", "look at the picture. {question}")
NLI_TEMPLATES = (NLI_TEMPLATE, "does it follow that {hypothesis} true, false or neither:",
                 "hypothesis: {hypothesis} true, false or neither?")
# Binding episodes (world.bind_episode): each episode gives two shapes two of
# these invented names; only its demonstrations tell which is which.
BIND_PROMPT = "this is a"
BIND_NAMES = ("dax", "blicket", "wug", "zup", "fep", "toma", "kiki", "gazzer")
# Question answering over a text (the multitask clusters world_text_qa,
# world_count, world_attribute; NLI held out).
TEXT_QA_TEMPLATES = (VQA_TEMPLATE, "read the text. {question} answer:",
                     "{question} answer in one word:")


# The id after every answer, in training rows and in-context demonstrations:
# the tokenizer attribute `eod` (`</s>`, end of document / answer).
ANSWER_END = "eod"
ANSWER_END_TEXT = "</s>"  # how prompts show it


def answer_end_id(tokenizer) -> int:
  """The `</s>` id that ends every answer (`ANSWER_END` of the tokenizer)."""
  if not hasattr(tokenizer, ANSWER_END):
    raise ValueError(f"tokenizer {type(tokenizer).__name__} has no {ANSWER_END!r} id "
                     "(the end-of-answer token)")
  return int(getattr(tokenizer, ANSWER_END))


def answer_ids(tokenizer, text: str) -> List[int]:
  """An answer as trained and demonstrated: its tokens (on their own), then `</s>`."""
  return list(tokenizer.encode(text)) + [answer_end_id(tokenizer)]


def majority_answer(answers: Sequence[str]) -> str:
  """The most frequent answer (first seen wins ties)."""
  counts: Dict[str, int] = {}
  for a in answers:
    counts[a] = counts.get(a, 0) + 1
  return max(counts, key=lambda a: counts[a])


def _sample(refs: List[str], rng) -> str:
  return refs[int(rng.integers(len(refs)))] if rng is not None else refs[0]


# answer field -> pick(references, rng or None for evaluation) -> answer text
_PICK: Dict[str, Callable[[List[str], Any], str]] = {
    "label": lambda refs, rng: refs[0],
    "answers": lambda refs, rng: majority_answer(refs),
    "captions": _sample,
}


@dataclasses.dataclass
class Parsed:
  """A record's canonical fields, checked and cleaned."""
  fields: Dict[str, Any]  # `texts` stripped
  refs: List[str]         # the answer's references: label word, answers or captions
  label_id: int = -1      # class index for label formats


@dataclasses.dataclass(frozen=True)
class Format:
  name: str
  templates: Tuple[str, ...]
  answer: str = "label"              # "label" | "answers" | "captions" (the field read)
  labels: Tuple[str, ...] = ()       # label id -> word (answer="label")
  texts: Tuple[str, ...] = ()        # string fields that must be non-empty
  images: Tuple[str, ...] = ()       # image fields, in row order
  audio: Tuple[str, ...] = ()        # sound-clip fields, after the images
  video: Tuple[str, ...] = ()        # video fields, after the sound clips
  encoded: str = ""                  # template of the text-encoder text ("" none)
  encoded_items: str = "split"       # "split" over items | "one" item
  eval_prompt: Optional[str] = None  # evaluation template (default templates[0])
  answer_room: Optional[int] = None  # answer positions kept when the prompt is cut

  def parse(self, fields) -> Tuple[Optional[Parsed], str]:
    """(Parsed, "") or (None, the stats counter of why the record is skipped)."""
    label_id = -1
    if self.answer == "label":
      if fields["label"] not in range(len(self.labels)):
        return None, "skipped_bad_label"
      label_id = int(fields["label"])
      refs = [self.labels[label_id]]
    else:
      refs = [a.strip() for a in fields[self.answer] if a and a.strip()]
    clean = dict(fields)
    for k in self.texts:
      clean[k] = fields[k].strip()
    if not refs or not all(clean[k] for k in self.texts):
      return None, "skipped_empty_text"
    return Parsed(clean, refs, label_id), ""

  def media(self) -> List[Tuple[str, str]]:
    """(media kind, field) of every docked input, in row order."""
    return ([("image", f) for f in self.images] + [("audio", f) for f in self.audio]
            + [("video", f) for f in self.video])

  def template(self, rng) -> str:
    """The training template: the only one, or one drawn with `rng`."""
    if len(self.templates) == 1:
      return self.templates[0]
    return self.templates[int(rng.integers(len(self.templates)))]

  def eval_template(self, override: Optional[str] = None) -> str:
    if override is not None:
      return override
    return self.templates[0] if self.eval_prompt is None else self.eval_prompt

  def prompt(self, parsed: Parsed, template: str) -> str:
    return template.format(**parsed.fields)

  def encoder_text(self, parsed: Parsed) -> str:
    return self.encoded.format(**parsed.fields)

  def target(self, parsed: Parsed, rng=None) -> str:
    """The answer text a row is trained on (`rng`) or an evaluation labels with (None)."""
    return _PICK[self.answer](parsed.refs, rng)

  def encoder_items(self, enc_cfg) -> int:
    """How many items of the text encoder the encoded text may fill."""
    return enc_cfg.max_items if self.encoded_items == "split" else 1


_FIELD = re.compile(r"\{\w+\}")


def prompt_vocabulary() -> List[str]:
  """The words prompts are made of: every registered format's templates
  (fields removed) and evaluation prompt, the zero-shot caption prompts, and every label
  word, in registration order without repeats. The embedded world's tokenizer
  trains on them (data/prepare.py), so each encodes in few pieces."""
  out: List[str] = [CAPTION_PROMPT, AUDIO_CAPTION_PROMPT, VIDEO_CAPTION_PROMPT]
  for name in FORMATS:
    fmt = FORMATS.get(name)
    texts = list(fmt.templates) + [fmt.eval_template()] + list(fmt.labels)
    out += [" ".join(_FIELD.sub(" ", t).split()) for t in texts]
  return list(dict.fromkeys(t for t in out if t))


def chunks(ids: Sequence[int], size: int) -> List[List[int]]:
  """`ids` in consecutive pieces of at most `size` (one per encoder item)."""
  return [list(ids[i:i + size]) for i in range(0, len(ids), size)]


def register(fmt: Format) -> Format:
  return FORMATS.register(fmt.name)(fmt)


_IMAGE = dict(images=("image",))
register(Format("caption", ("",), answer="captions", eval_prompt=CAPTION_PROMPT, **_IMAGE))
register(Format("caption_prompted", CAPTION_TEMPLATES[:1], answer="captions", answer_room=2,
                **_IMAGE))
register(Format("caption_instruct", CAPTION_TEMPLATES, answer="captions", answer_room=2, **_IMAGE))
register(Format("vqa", (VQA_TEMPLATE,), answer="answers", texts=("question",), **_IMAGE))
register(Format("vqa_instruct", VQA_TEMPLATES, answer="answers", texts=("question",), **_IMAGE))
_NLI = dict(labels=NLI_WORDS, texts=("premise", "hypothesis"))
register(Format("nli", (NLI_TEMPLATE,), encoded="{premise}", **_NLI))
register(Format("nli_instruct", NLI_TEMPLATES, encoded="{premise}", **_NLI))
# Premise and hypothesis in one text-encoder item (the bidirectional encoder
# compares them; finetuned with the decoder frozen).
register(Format("nli_encoded", ("true, false or neither? answer:",),
                encoded="{premise} question: {hypothesis}", encoded_items="one", **_NLI))
# NLVR2-style: two images, each on its own encoder item, then the statement.
register(Format("pair", ("statement: {sentence} true or false? answer:",), labels=PAIR_WORDS,
                texts=("sentence",), images=("image_left", "image_right")))

# Sound and motion (the embedded world's clips and videos, world_av.py).
# Captioning as pretraining (no prompt; zero-shot evaluation asks with the
# *_CAPTION_PROMPT) and finetuning ("caption:"); questions as VQA: about the
# sound, about the video, and about a picture with a sound (both docked).
_AUDIO, _VIDEO = dict(audio=("audio",)), dict(video=("video",))
register(Format("audio_caption", ("",), answer="captions", eval_prompt=AUDIO_CAPTION_PROMPT,
                **_AUDIO))
register(Format("audio_caption_prompted", CAPTION_TEMPLATES[:1], answer="captions",
                answer_room=2, **_AUDIO))
register(Format("audio_qa", (VQA_TEMPLATE,), answer="answers", texts=("question",), **_AUDIO))
register(Format("audio_image_qa", (VQA_TEMPLATE,), answer="answers", texts=("question",),
                **_IMAGE, **_AUDIO))
register(Format("video_caption", ("",), answer="captions", eval_prompt=VIDEO_CAPTION_PROMPT,
                **_VIDEO))
register(Format("video_caption_prompted", CAPTION_TEMPLATES[:1], answer="captions",
                answer_room=2, **_VIDEO))
register(Format("video_qa", (VQA_TEMPLATE,), answer="answers", texts=("question",), **_VIDEO))

# Binding episodes: one item = an object (its picture, or its phrase through
# the text encoder: plain tokens without one), BIND_PROMPT, its name. An
# episode task (tasks.episode_task) lays out all its items as one in-context
# prompt; the evaluators build the same from the item format.
_BIND = dict(answer="label", labels=BIND_NAMES)
register(Format("bind_image", (BIND_PROMPT,), **_BIND, **_IMAGE))
register(Format("bind_text", (BIND_PROMPT,), encoded="{text}", texts=("text",), **_BIND))
EPISODE_ITEM_FORMATS = {"episode_image": "bind_image", "episode_text": "bind_text"}

# Questions about a text (no image), answered from it: the context through
# the text encoder (plain tokens without one), an instruction template drawn
# per row, the one answer.
register(Format("text_qa", TEXT_QA_TEMPLATES, answer="answers", texts=("context", "question"),
                encoded="{context}"))
