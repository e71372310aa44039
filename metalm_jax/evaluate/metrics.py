"""Task metrics: VQAv2 accuracy and captioning scores (pycocoevalcap).

VQA answer normalisation follows the rules of the official VQAv2 evaluation:
newlines/tabs -> spaces and strip; each punctuation mark in PUNCTUATION is
deleted when it touches a space in the answer or the answer has a comma
between digits, and is replaced by a space otherwise; a period not followed
by a digit is deleted; then, per lower-cased word: number words zero..ten
(and "none") become digits, the articles a/an/the are dropped, and
apostrophe-less contractions get their apostrophes back ("isnt" -> "isn't").
"""
from __future__ import annotations

import itertools
import logging
import re
import shutil
from typing import Dict, List, Optional, Sequence, Tuple

PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-",
               ">", "<", "@", "`", ",", "?", "!")
NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
                "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
ARTICLES = frozenset({"a", "an", "the"})

# Contractions in their written form. Every spelling with some apostrophes
# dropped maps to it, except spellings that are ordinary words (kept as is).
_CONTRACTIONS = (
    "ain't aren't can't could've couldn't couldn't've didn't doesn't don't hadn't hadn't've "
    "hasn't haven't he'd he'd've he's how'd how'll how's i'd've i'm i've isn't it'd it'd've "
    "it'll ma'am mightn't mightn't've might've mustn't must've needn't not've o'clock oughtn't "
    "shan't she'd've should've shouldn't shouldn't've somebody'd somebody'd've somebody'll "
    "somebody's someone'd someone'd've someone'll someone's something'd something'd've "
    "something'll that's there'd there'd've there're there's they'd they'd've they'll they're "
    "they've 'twas wasn't we'd've we've weren't what'll what're what's what've when's where'd "
    "where's where've who'd who'd've who'll who's who've why'll why're why's won't would've "
    "wouldn't wouldn't've y'all y'all'll y'all'd've you'd you'd've you'll you're you've").split()
# "im" and "ive" stay too: the official table never converts them.
_ORDINARY_WORDS = frozenset({"its", "id", "ill", "hell", "shell", "well", "were", "wed", "shed",
                             "lets", "whore", "im", "ive"})


def _contraction_table() -> Dict[str, str]:
  table = {}
  for word in _CONTRACTIONS:
    cuts = [i for i, ch in enumerate(word) if ch == "'"]
    for r in range(1, len(cuts) + 1):
      for drop in itertools.combinations(cuts, r):
        variant = "".join(ch for i, ch in enumerate(word) if i not in drop)
        if variant not in _ORDINARY_WORDS:
          table.setdefault(variant, word)
  return table


CONTRACTIONS = _contraction_table()
_DIGIT_COMMA = re.compile(r"\d,\d")
_PERIOD = re.compile(r"\.(?!\d)")


def _strip_punctuation(text: str) -> str:
  drop_all = _DIGIT_COMMA.search(text) is not None
  out = text
  for p in PUNCTUATION:
    if drop_all or (p + " ") in text or (" " + p) in text:
      out = out.replace(p, "")
    else:
      out = out.replace(p, " ")
  return _PERIOD.sub("", out)


def _normalise_words(text: str) -> str:
  words = [NUMBER_WORDS.get(w, w) for w in text.lower().split()]
  words = [CONTRACTIONS.get(w, w) for w in words if w not in ARTICLES]
  return " ".join(words)


def normalize_vqa_answer(answer: str) -> str:
  """The official VQAv2 answer normalisation (rules in the module docstring)."""
  text = answer.replace("\n", " ").replace("\t", " ").strip()
  return _normalise_words(_strip_punctuation(text))


def vqa_accuracy(prediction: str, answers: Sequence[str], *,
                 strict_official: bool = False) -> float:
  """VQAv2 accuracy of one prediction against the human answers (10 in VQAv2).

  For each human answer left out in turn, the prediction scores
  min(#matching remaining answers / 3, 1); the result is the mean over the
  leave-one-out subsets. Answers and prediction are normalised first. The
  official script skips normalisation when all human answers are identical
  (so "two" against ten "2" scores 0 there); `strict_official=True`
  reproduces that quirk, the default always normalises.
  """
  if not answers:
    raise ValueError("answers is empty: VQA accuracy needs at least one human answer")
  clean = lambda s: s.replace("\n", " ").replace("\t", " ").strip()
  gts = [clean(a) for a in answers]
  pred = clean(prediction)
  if not strict_official or len(set(gts)) > 1:
    gts = [normalize_vqa_answer(a) for a in gts]
    pred = normalize_vqa_answer(pred)
  matches = [g == pred for g in gts]
  total = sum(matches)
  per_subset = [min((total - m) / 3.0, 1.0) for m in matches]
  return sum(per_subset) / len(per_subset)


# ----------------------------------------------------------------- captions

_SIMPLE_PUNCT = re.compile(r"[.?!,:;\-`\"()\[\]{}]|''")


def simple_tokenize(text: str) -> str:
  """Java-free stand-in for the PTB tokenizer: lower-case, split "'s"-style
  clitics off, drop the punctuation the PTB pipeline removes, single spaces."""
  text = text.lower().replace("\n", " ")
  text = re.sub(r"(\w)('s|'re|'ve|'ll|'d|'m|n't)\b", r"\1 \2", text)
  text = _SIMPLE_PUNCT.sub(" ", text)
  return " ".join(w for w in text.split() if w != "'")


def java_available() -> bool:
  return shutil.which("java") is not None


def tokenize_captions(captions: Dict[str, List[str]],
                      use_java: Optional[bool] = None) -> Dict[str, List[str]]:
  """{id: [caption]} -> {id: [tokenised caption]} with pycocoevalcap's PTB
  tokenizer when Java is present, else `simple_tokenize`."""
  use_java = java_available() if use_java is None else use_java
  if use_java:
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
    return PTBTokenizer().tokenize({k: [{"caption": c} for c in v] for k, v in captions.items()})
  return {k: [simple_tokenize(c) for c in v] for k, v in captions.items()}


def _spice_models_present() -> bool:
  """SPICE's Stanford CoreNLP jar, which pycocoevalcap downloads on first use
  (never here): a file inside the installed package."""
  import importlib.resources
  return (importlib.resources.files("pycocoevalcap.spice") / "lib" /
          "stanford-corenlp-3.6.0.jar").is_file()


def caption_metrics(predictions: Dict[str, str], references: Dict[str, List[str]], *,
                    meteor: Optional[bool] = None, spice: Optional[bool] = None,
                    use_java: Optional[bool] = None) -> Dict[str, float]:
  """Corpus BLEU-1..4 and CIDEr(-D) by pycocoevalcap, plus METEOR and SPICE.

  METEOR and SPICE need Java (default: on when Java is present); SPICE also
  needs the Stanford CoreNLP jar already installed (it is never downloaded
  here) and is skipped with a log line otherwise."""
  return caption_metrics_per_example(predictions, references, meteor=meteor, spice=spice,
                                     use_java=use_java)[0]


def caption_metrics_per_example(
    predictions: Dict[str, str], references: Dict[str, List[str]], *,
    meteor: Optional[bool] = None, spice: Optional[bool] = None,
    use_java: Optional[bool] = None) -> Tuple[Dict[str, float], Dict[str, Dict[str, float]]]:
  """(`caption_metrics`' corpus scores, {"CIDEr": {id: that id's CIDEr}}).

  The per-id CIDEr scores come from the same pycocoevalcap call as the corpus
  score (their document frequencies are the corpus'), and the corpus CIDEr
  is their mean, so paired comparisons of two runs over the same ids
  (evaluate/stats.py) measure the reported number. BLEU has no such
  per-id decomposition (its corpus score is not a mean) and is not split."""
  from pycocoevalcap.bleu.bleu import Bleu
  from pycocoevalcap.cider.cider import Cider

  if not predictions:
    raise ValueError("predictions is empty")
  missing = [k for k in predictions if k not in references]
  if missing:
    raise ValueError(f"predictions id {missing[0]!r} has no references")
  for k in predictions:
    if not references[k]:
      raise ValueError(f"references[{k!r}] is empty")
    if not isinstance(predictions[k], str):
      raise ValueError(f"predictions[{k!r}] is {type(predictions[k]).__name__}, expected str")
  java = java_available() if use_java is None else use_java
  res = tokenize_captions({k: [v] for k, v in predictions.items()}, java)
  gts = tokenize_captions({k: list(references[k]) for k in predictions}, java)

  out: Dict[str, float] = {}
  bleu, _ = Bleu(4).compute_score(gts, res)
  for n, value in enumerate(bleu, 1):
    out[f"BLEU-{n}"] = float(value)
  cider, per_image = Cider().compute_score(gts, res)
  out["CIDEr"] = float(cider)
  # Cider scores the ids in the order of gts' keys.
  per_example = {"CIDEr": {k: float(v) for k, v in zip(gts.keys(), per_image)}}
  if java and (meteor is None or meteor):
    from pycocoevalcap.meteor.meteor import Meteor
    scorer = Meteor()
    try:
      out["METEOR"] = float(scorer.compute_score(gts, res)[0])
    finally:
      del scorer  # its __del__ stops the Java process
  elif meteor:
    raise ValueError("meteor=True needs Java, which is not on PATH")
  if spice or spice is None:
    if java and _spice_models_present():
      from pycocoevalcap.spice.spice import Spice
      out["SPICE"] = float(Spice().compute_score(gts, res)[0])
    elif spice:
      raise ValueError("spice=True needs Java and "
                       "pycocoevalcap/spice/lib/stanford-corenlp-3.6.0.jar")
    else:
      logging.info("caption_metrics: SPICE skipped (needs Java and the CoreNLP jar, "
                   "not downloaded)")
  return out, per_example
