"""The audio/video benchmark's table (benchmarks/av_tasks.py) from fake
final scalars, and the evaluators' modality-blind inputs (`blind`: media
parts blanked, text parts kept). No model, no data: well under a second."""
import numpy as np
import pytest

from benchmarks import av_tasks
from metalm_jax.evaluate import evaluators as E
from metalm_jax.evaluate import prompts as P
from metalm_jax.evaluate.evaluators import examples


def test_rows_compare_each_task_with_its_baselines():
  results = {
      "audio caption": {"caption/CIDEr": 1.2, "caption/fixed_caption_CIDEr": 0.4,
                        "blind/CIDEr": 1.5, "caption/BLEU-4": 0.3,
                        "caption/fixed_caption_BLEU-4": 0.1, "blind/BLEU-4": 0.2,
                        "caption/examples": 64},
      "video QA": {"vqa/accuracy": 0.5, "vqa/majority_answer_accuracy": 0.5,
                   "blind/accuracy": 0.25, "vqa/examples": 32},
  }
  rows = av_tasks.rows_of(results)
  assert [(r["task"], r["metric"], r["value"], r["examples"]) for r in rows] == [
      ("audio caption", "CIDEr", 1.2, 64), ("audio caption", "BLEU-4", 0.3, 64),
      ("video QA", "accuracy", 0.5, 32)]
  assert [[(b["baseline"], b["value"], b["beaten"]) for b in r["baselines"]] for r in rows] == [
      [("most frequent training caption", 0.4, True), ("same model, silent clip", 1.5, False)],
      [("most frequent training caption", 0.1, True), ("same model, silent clip", 0.2, True)],
      [("majority answer", 0.5, False), ("same model, blank video", 0.25, True)]]  # a tie loses
  md = av_tasks.markdown(rows).splitlines()
  assert len(md) == 2 + 6
  assert md[2] == ("| audio caption (64 clips) | CIDEr | 1.200 | most frequent training caption "
                   "| 0.400 | yes |")
  assert md[7] == "|  |  |  | same model, blank video | 0.250 | yes |"
  with pytest.raises(KeyError):  # a missing result is an error, never a silent row
    av_tasks.rows_of({"video QA": {"vqa/accuracy": 0.5, "vqa/examples": 1}})


def test_blank_zeroes_media_and_keeps_text():
  rng = np.random.default_rng(0)
  parts = [P.Audio(rng.normal(size=16).astype(np.float32), encoder="audio"),
           P.Video(rng.normal(size=(2, 4, 4, 3)).astype(np.float32)),
           P.Image(rng.normal(size=(4, 4, 3))), P.Text("question: which object moved? answer:")]
  out = [examples.blank(p) for p in parts]
  for before, after, field in zip(parts, out, ("waveform", "frames", "pixels")):
    a = getattr(after, field)
    assert type(after) is type(before) and a.shape == getattr(before, field).shape
    assert a.dtype == getattr(before, field).dtype and not np.any(a)
  assert out[0].encoder == "audio" and out[3] is parts[3]
  assert E.resolve(dict(type="vqa"))["blind"] is False
