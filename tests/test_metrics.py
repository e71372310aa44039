"""VQA accuracy on hand-made cases; caption metrics against pycocoevalcap."""
import itertools
import math

import pytest

from metalm_jax.evaluate import metrics


def leave_one_out(pred, answers):
  """Brute force over the 9-of-10 subsets (answers already normalised)."""
  subsets = list(itertools.combinations(range(len(answers)), len(answers) - 1))
  return sum(min(sum(answers[i] == pred for i in s) / 3, 1) for s in subsets) / len(subsets)


@pytest.mark.parametrize("text,expected", [
    ("Two", "2"), ("2", "2"), ("two.", "2"), ("a dog", "dog"), ("The red car.", "red car"),
    ("isnt", "isn't"), ("isn't", "isn't"), ("couldntve", "couldn't've"), ("yes!", "yes"),
    ("3,000", "3000"), ("1.5", "1.5"), ("hot-dog", "hot dog"), ("hot - dog", "hot dog"),
    (" ten\tapples\n", "10 apples"), ("none", "0"), ("its", "its"), ("well", "well"),
])
def test_vqa_normalisation(text, expected):
  assert metrics.normalize_vqa_answer(text) == expected


def test_vqa_accuracy_hand_made_cases():
  tens = ["2"] * 10
  for pred in ("Two", "2", "two."):
    assert metrics.vqa_accuracy(pred, tens) == 1.0
  assert metrics.vqa_accuracy("a dog", ["dog"] * 10) == 1.0
  assert metrics.vqa_accuracy("dog", ["a dog"] * 6 + ["cat"] * 4) == 1.0
  assert metrics.vqa_accuracy("isnt", ["isn't"] * 10) == 1.0
  assert metrics.vqa_accuracy("cat", tens) == 0.0
  # m matching humans out of 10: each 9-subset credits min(matches / 3, 1).
  # m=1: nine subsets give 1/3, one gives 0 -> 0.3; m=2: 2 x 1/3 + 8 x 2/3 -> 0.6;
  # m=3: 3 x 2/3 + 7 x 1 -> 0.9; m=4: every subset has >= 3 -> 1.0.
  for m, expected in ((1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0)):
    answers = ["2"] * m + ["3"] * (10 - m)
    got = metrics.vqa_accuracy("two", answers)
    assert math.isclose(got, expected, abs_tol=1e-12), (m, got)
    assert math.isclose(got, leave_one_out("2", answers), abs_tol=1e-12)


def test_vqa_strict_official_quirk():
  # The official script normalises only when the humans disagree.
  assert metrics.vqa_accuracy("two", ["2"] * 10, strict_official=True) == 0.0
  assert metrics.vqa_accuracy("2", ["2"] * 10, strict_official=True) == 1.0
  assert metrics.vqa_accuracy("two", ["2"] * 9 + ["3"], strict_official=True) == 1.0
  with pytest.raises(ValueError, match="answers is empty"):
    metrics.vqa_accuracy("2", [])


PREDS = {"1": "A man riding a horse on the beach.", "2": "Two dogs play in the snow.",
         "3": "A plate of food with broccoli."}
REFS = {"1": ["A man rides a horse along the beach.", "a person on a horse near the ocean"],
        "2": ["Two dogs are playing in the snow.", "dogs running through snow"],
        "3": ["A plate with broccoli and rice.", "a plate of food on a table",
              "Broccoli on a white plate."]}


@pytest.mark.parametrize("use_java", [False, True])
def test_caption_metrics_equal_pycocoevalcap_called_directly(use_java):
  if use_java and not metrics.java_available():
    pytest.skip("java is not installed: the PTB tokenizer path cannot run")
  from pycocoevalcap.bleu.bleu import Bleu
  from pycocoevalcap.cider.cider import Cider
  got = metrics.caption_metrics(PREDS, REFS, meteor=False, spice=False, use_java=use_java)
  res = metrics.tokenize_captions({k: [v] for k, v in PREDS.items()}, use_java)
  gts = metrics.tokenize_captions(REFS, use_java)
  bleu, _ = Bleu(4).compute_score(gts, res)
  cider, _ = Cider().compute_score(gts, res)
  assert got["BLEU-4"] == bleu[3] and got["BLEU-1"] == bleu[0]
  assert got["CIDEr"] == cider
  assert 0 < got["BLEU-4"] < got["BLEU-1"] < 1 and got["CIDEr"] > 0
  fixed = metrics.caption_metrics({k: "a photo" for k in PREDS}, REFS, meteor=False, spice=False,
                                  use_java=use_java)
  assert fixed["CIDEr"] < got["CIDEr"] / 5


def test_bleu_by_hand():
  # One image; n-gram precisions 4/5, 3/4, 2/3, 1/2, equal lengths (no brevity
  # penalty): BLEU-4 = (4/5 * 3/4 * 2/3 * 1/2) ** (1/4) = 0.2 ** 0.25.
  got = metrics.caption_metrics({"x": "a b c d e"}, {"x": ["a b c d f"]}, meteor=False,
                                spice=False, use_java=False)
  assert math.isclose(got["BLEU-1"], 0.8, abs_tol=1e-6)
  assert math.isclose(got["BLEU-4"], 0.2 ** 0.25, abs_tol=1e-6)


def test_simple_tokenizer_agrees_with_ptb_on_plain_captions():
  if not metrics.java_available():
    pytest.skip("java is not installed")
  caps = {"a": ["A dog's toy, on the grass.", "Two men -- laughing!", "It isn't red; it's blue?"]}
  ptb = metrics.tokenize_captions(caps, use_java=True)
  simple = metrics.tokenize_captions(caps, use_java=False)
  assert ptb == simple, (ptb, simple)


@pytest.mark.slow  # two Java METEOR start-ups, ~1-2 min on a loaded 2-core box
def test_meteor_when_java_present():
  if not metrics.java_available():
    pytest.skip("java is not installed")
  from pycocoevalcap.meteor.meteor import Meteor
  got = metrics.caption_metrics(PREDS, REFS, meteor=True, spice=False)
  gts = metrics.tokenize_captions(REFS)
  res = metrics.tokenize_captions({k: [v] for k, v in PREDS.items()})
  direct = Meteor()
  expected, _ = direct.compute_score(gts, res)
  del direct
  assert math.isclose(got["METEOR"], expected, abs_tol=1e-9) and 0 < expected < 1


def test_caption_metrics_bad_input():
  with pytest.raises(ValueError, match="predictions id 'q' has no references"):
    metrics.caption_metrics({"q": "a cat"}, {"x": ["a cat"]}, use_java=False)
  with pytest.raises(ValueError, match=r"references\['x'\] is empty"):
    metrics.caption_metrics({"x": "a cat"}, {"x": []}, use_java=False)
  with pytest.raises(ValueError, match="predictions is empty"):
    metrics.caption_metrics({}, {"x": ["a cat"]}, use_java=False)
