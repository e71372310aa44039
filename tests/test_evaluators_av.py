"""The caption and vqa evaluators on sound clips and videos of the test
world, with a randomly initialised tiny four-modality model: prompts come
from the formats (data/formats.py: "<audio> Describe this sound:", "<audio>
question: ... answer:", an image with a sound), the metrics equal
pycocoevalcap's CIDEr / BLEU-4 and the VQA accuracy recomputed from the
written predictions, the trivial baselines (the most frequent training
caption / answer) are scored on the same references, and the predictions
are the model's greedy continuations of the evaluator's own prompts. The
video cases run once the "video" encoder is registered (metalm_jax/models);
until then they are skipped."""
import collections
import json

import flax.linen as nn
import jax
import numpy as np
import pytest

from metalm_jax.data import formats, prepare
from metalm_jax.evaluate import decode
from metalm_jax.evaluate import evaluators as E
from metalm_jax.evaluate import metrics as metrics_lib
from metalm_jax.evaluate import prompts as P
from metalm_jax.models import metalm
from tests import av_fixtures

NEW = 4  # max_new_tokens of every evaluator here: one generation compile
EV = dict(num_examples=4, batch_size=4, max_new_tokens=NEW, num_baseline_examples=24,
          every_steps=1, bucket=64)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
  cfg = av_fixtures.av_test_config(str(tmp_path_factory.mktemp("tfds")))
  small = dict(num_layers=1, emb_dim=32, num_heads=2, mlp_dim=64)
  for section in [cfg.model.decoder] + [cfg.model.encoders[n] for n in cfg.model.encoders]:
    section.update(small)
  model = metalm.build_model(cfg.model)
  params = metalm.init_variables(model, jax.random.key(3), 1, 8)["params"]
  return E.Env(cfg, model, nn.meta.unbox(params), prepare.load_tokenizer(cfg), 0)


def _run(env, tmp_path, evals):
  env.config.evals = {k: dict(EV, **v) for k, v in evals.items()}
  out = E.run_evals(env.config, env.model, env.params, 0, str(tmp_path))
  rows = {k: [json.loads(line) for line in open(tmp_path / "evals" / f"{k}_step_0.jsonl")]
          for k in evals}
  return out, rows


def _check_caption(out, rows, name, prompt, env, ev):
  assert len(rows) == 4 and all(r["prompt"] == prompt for r in rows)
  ref = metrics_lib.caption_metrics({str(r["index"]): r["prediction"] or "." for r in rows},
                                    {str(r["index"]): r["references"] for r in rows},
                                    meteor=False, spice=False)
  assert out[f"{name}/CIDEr"] == pytest.approx(ref["CIDEr"], abs=1e-9)
  assert out[f"{name}/BLEU-4"] == pytest.approx(ref["BLEU-4"], abs=1e-9)
  train, _ = E.load_examples(env, E.resolve(ev), "train", 24, 1)
  fixed = collections.Counter(e.label for e in train).most_common(1)[0][0]  # ties: first seen
  base = metrics_lib.caption_metrics({str(r["index"]): fixed for r in rows},
                                     {str(r["index"]): r["references"] for r in rows},
                                     meteor=False, spice=False)
  assert out[f"{name}/fixed_caption_CIDEr"] == pytest.approx(base["CIDEr"], abs=1e-9)
  assert out[f"{name}/fixed_caption_CIDEr"] > 0  # a world caption shares words with the refs


def _check_vqa(out, rows, name, prefix, env, ev):
  assert len(rows) == 4
  assert all(r["prompt"].startswith(prefix + " question: ") and r["prompt"].endswith("answer:")
             for r in rows)
  acc = np.mean([metrics_lib.vqa_accuracy(r["prediction"], r["references"]) for r in rows])
  assert out[f"{name}/accuracy"] == pytest.approx(acc, abs=1e-9)
  train, _ = E.load_examples(env, E.resolve(ev), "train", 24, 1)
  answer = collections.Counter(e.label for e in train).most_common(1)[0][0]
  base = np.mean([metrics_lib.vqa_accuracy(answer, r["references"]) for r in rows])
  assert out[f"{name}/majority_answer_accuracy"] == pytest.approx(base, abs=1e-9)


def _generated(env, ev, predictions):
  """The evaluator's first prediction is the greedy continuation of its own
  prompt (decoded alone, without padding)."""
  exs, _ = E.load_examples(env, E.resolve(ev), "validation", 1, 0)
  tok = env.tokenizer
  for ex, pred in zip(exs, predictions):
    batch = P.build_batch([ex.parts], tok, env.model.cfg)
    res = decode.greedy(env.model, env.params, batch, max_new_tokens=NEW, eos_id=tok.eos,
                        pad_id=tok.pad)
    assert tok.decode(np.asarray(res.ids)[0, :int(res.lengths[0])]).strip() == pred


def test_audio_evaluators_equal_their_metrics_on_their_predictions(env, tmp_path):
  evals = {"ac": dict(type="caption", source="world_audio_caption", meteor=False),
           "aq": dict(type="vqa", source="world_audio_qa"),
           "aiq": dict(type="vqa", source="world_audio_image_qa")}
  out, rows = _run(env, tmp_path, evals)
  _check_caption(out, rows["ac"], "ac", f"<audio> {formats.AUDIO_CAPTION_PROMPT}", env,
                 evals["ac"])
  _check_vqa(out, rows["aq"], "aq", "<audio>", env, evals["aq"])
  _check_vqa(out, rows["aiq"], "aiq", "<image> <audio>", env, evals["aiq"])
  _generated(env, evals["aq"], [r["prediction"] for r in rows["aq"]])


def test_video_evaluators_equal_their_metrics_on_their_predictions(env, tmp_path):
  evals = {"vc": dict(type="caption", source="world_video_caption", meteor=False),
           "vq": dict(type="vqa", source="world_video_qa")}
  out, rows = _run(env, tmp_path, evals)
  _check_caption(out, rows["vc"], "vc", f"<video> {formats.VIDEO_CAPTION_PROMPT}", env,
                 evals["vc"])
  _check_vqa(out, rows["vq"], "vq", "<video>", env, evals["vq"])
  _generated(env, evals["vq"], [r["prediction"] for r in rows["vq"]])


def test_unusable_clips_are_skipped_with_their_counters(env):
  """A record the pipeline would skip is skipped by the evaluators too,
  counted under the pipeline's name."""
  fmt = formats.FORMATS.get("audio_qa")
  ev = E.resolve(dict(type="vqa", source="world_audio_qa"))
  stats = {}
  bad = {"audio": b"RIFF\x00\x00 not a wav", "question": "how many sounds?", "answers": ["2"]}
  assert E.make_example(fmt, bad, env, ev, stats) is None
  silent = dict(bad, audio=np.zeros(16000))
  assert E.make_example(fmt, silent, env, ev, stats) is None
  assert stats == {"skipped_bad_audio": 1, "skipped_silent_audio": 1}
