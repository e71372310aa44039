"""Measurements that read the claims rows which do not hold (docs/claims.md),
from a claims workdir's predictions files and the world's own generator:

    python benchmarks/claims_readings.py --workdir=/tmp/claims \
        --out=benchmarks/results/claims/readings.json

  nli_surface      accuracy on the NLI validation pairs of the best rule that
                   reads only the hypothesis template and whether the premise
                   says "only" (majority label per bucket on the train split)
  nli_labels       the validation label shares (first EXAMPLES pairs)
  caption_prompted share of zero-shot captions (with the prompt) that hold an
                   invented binding name, and that hold a colour and a shape
  vqa_*            share of VQA answers (zero-shot; finetuned with the decoder
                   frozen; the same with images blanked) that are caption-like
                   (a colour and a shape word in more than three words), and
                   the five most frequent answers with their shares

The output file carries the run's provenance (metalm_jax/provenance.py).
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import re
import sys
from typing import Dict, List

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

from benchmarks import claims  # noqa: E402
from configs.experiments import claims as protocol  # noqa: E402
from metalm_jax import provenance  # noqa: E402
from metalm_jax.data import formats, world  # noqa: E402


def _nli(split: str, index: int) -> Dict[str, str]:
  """The NLI triple of a world scene, drawn as world.scene_record draws it."""
  objs = world.make_scene(0, split, index)
  rng = np.random.default_rng([0, world.SPLITS.index(split), index, 1])
  world.questions(objs, rng)
  return world.nli_triple(objs, rng)


def _bucket(t: Dict[str, str]) -> tuple:
  h = t["hypothesis"]
  template = "no" if h.startswith("there is no") else "a" if h.startswith("there is a") else "the"
  return template, " only " in f" {t['premise']} "


def nli_surface(num_train: int, num_eval: int) -> Dict[str, float]:
  train = [_nli("train", i) for i in range(num_train)]
  votes: Dict[tuple, collections.Counter] = collections.defaultdict(collections.Counter)
  for t in train:
    votes[_bucket(t)][t["label"]] += 1
  rule = {b: c.most_common(1)[0][0] for b, c in votes.items()}
  val = [_nli("validation", i) for i in range(num_eval)]
  acc = float(np.mean([rule.get(_bucket(t)) == t["label"] for t in val]))
  shares = collections.Counter(t["label"] for t in val)
  return {"surface_rule_accuracy": acc,
          "label_shares": {k: v / len(val) for k, v in sorted(shares.items())}}


_WORDS = set(world.COLORS), set(world.SHAPES)


def caption_like(text: str) -> bool:
  words = re.findall(r"[a-z]+", text.lower())
  return len(words) > 3 and bool(_WORDS[0] & set(words)) and bool(_WORDS[1] & set(words))


def _preds(runs, stage: str, evaluator: str) -> List[str]:
  return [r["prediction"] for x in runs.get(stage, [])
          for r in claims.eval_rows(x["workdir"], evaluator, x["evals_step"])]


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--workdir", required=True)
  p.add_argument("--out", required=True)
  args = p.parse_args(argv)
  begun = provenance.start()
  runs = claims.gather(os.path.abspath(args.workdir))
  names = set(formats.BIND_NAMES)
  caps = _preds(runs, "vl_zeroshot", "caption")
  out = {"nli": nli_surface(3000, protocol.EXAMPLES),
         "caption_prompted": {
             "with_binding_name": float(np.mean([bool(names & set(c.split())) for c in caps])),
             "caption_like": float(np.mean([caption_like(c) for c in caps])),
             "examples": caps[:5]}}
  for key, stage in (("vqa_zeroshot", "vl_zeroshot"), ("vqa_finetuned", "vqa_ft"),
                     ("vqa_finetuned_blank", "vqa_ft_blind")):
    preds = _preds(runs, stage, "vqa")
    top = collections.Counter(preds).most_common(5)
    out[key] = {"caption_like": float(np.mean([caption_like(x) for x in preds])),
                "n": len(preds), "top": [[a, c / len(preds)] for a, c in top]}
  print(json.dumps(out, indent=2))
  provenance.write_json(args.out, out, begun, devices="subprocess")  # no jax work here


if __name__ == "__main__":
  main()
