"""Digests of the training rows and evaluation prompts of the experiment
configs, to check that a refactor leaves them bit-identical.

    python benchmarks/row_digests.py --out=/tmp/now.json [--data_dir=D]
    (in another checkout)  python benchmarks/row_digests.py --out=/tmp/before.json
    python benchmarks/row_digests.py --compare=/tmp/before.json,/tmp/now.json

For each config (pretraining and finetuning files at size=tiny, each modality)
on the small `test` world: sha256 of the first 3 pipeline batches of 4 rows
(every array of the batch contract), and for each of its evaluators (3
examples, a 1-layer random model) the sha256 of every prompt batch the
evaluator builds (evaluate/prompts.build_batch). --compare prints the keys
that differ and exits 1 if any.
"""
import argparse
import hashlib
import importlib
import json
import os
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = [("pretrain_vl", "size=tiny"), ("pretrain_lang", "size=tiny"),
           ("pretrain_av", "size=tiny"), ("finetune_vqa", "size=tiny"),
           ("finetune_vqa", "size=tiny,modality=audio"),
           ("finetune_vqa", "size=tiny,modality=video"), ("finetune_caption", "size=tiny"),
           ("finetune_caption", "size=tiny,modality=audio"), ("finetune_nli", "size=tiny"),
           ("finetune_nlvr2", "size=tiny"), ("finetune_multitask", "size=tiny")]


def _hash_tree(tree, h):
  import numpy as np
  if isinstance(tree, dict):
    for k in sorted(tree):
      h.update(k.encode())
      _hash_tree(tree[k], h)
  else:
    a = np.asarray(tree)
    h.update(str(a.dtype).encode())
    h.update(str(a.shape).encode())
    h.update(np.ascontiguousarray(a).tobytes())


def digests(data_dir: str) -> dict:
  """{config:arg:rows: sha256, config:arg:eval:NAME: [sha256 per prompt batch]}."""
  import jax
  from metalm_jax.data import pipeline
  from metalm_jax.evaluate import prompts
  from metalm_jax.evaluate.evaluators import runner
  from metalm_jax.models import metalm
  seen = []
  build = prompts.build_batch

  def recorded(*a, **k):
    b = build(*a, **k)
    h = hashlib.sha256()
    _hash_tree(b, h)
    seen.append(h.hexdigest()[:16])
    return b

  prompts.build_batch = recorded
  out = {}
  for mod, arg in CONFIGS:
    c = importlib.import_module("configs." + mod).get_config(arg)
    c.data.data_dir, c.data.world = data_dir, "test"
    key = f"{mod}:{arg}"
    it = pipeline.make_iterator(c, "train", batch_size=4)
    h = hashlib.sha256()
    for _ in range(3):
      _hash_tree(next(it), h)
    out[key + ":rows"] = h.hexdigest()
    for part in [c.model.decoder] + list(c.model.encoders.values()):
      part.update(num_layers=1)
    evs = dict(c.get("evals") or {})
    if not evs:
      continue
    for ev in evs.values():
      ev["num_examples"] = 3
    model = metalm.build_model(c.model)
    params = metalm.init_variables(model, jax.random.key(0), 1, 8)["params"]
    for name in sorted(evs):
      seen.clear()
      runner.run_evals(c, model, params, 0, tempfile.mkdtemp(), names=[name])
      out[f"{key}:eval:{name}"] = list(seen)
    print(key, "done", flush=True)
  return out


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--out", help="write the digests (with provenance) here")
  p.add_argument("--data_dir", default="", help="test world location (default: a temp dir)")
  p.add_argument("--compare", help="BEFORE.json,AFTER.json: print the differing keys")
  a = p.parse_args()
  if a.compare:
    before, after = (json.load(open(f))["digests"] for f in a.compare.split(","))
    diff = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    print(f"{len(diff)} of {len(before)} keys differ" + "".join(f"\n  {k}" for k in diff))
    sys.exit(1 if diff else 0)
  # The checkout to digest is the working directory's (run this file from
  # another checkout's root to digest that one).
  sys.path.insert(0, os.getcwd())
  try:
    from metalm_jax import provenance
  except ImportError:  # a checkout from before provenance.py
    provenance = None
  begun = provenance.start() if provenance else None
  result = {"digests": digests(a.data_dir or tempfile.mkdtemp())}
  if provenance:
    provenance.write_json(a.out, result, begun)
  else:
    with open(a.out, "w") as f:
      json.dump(result, f, indent=1, sort_keys=True)
  print(f"wrote {a.out}")


if __name__ == "__main__":
  main()
