"""Prepare data sets ahead of a run (otherwise done on first use).

    python -m metalm_jax.data.build --data_dir=~/data --world=tiny --vocab_size=1024
    python -m metalm_jax.data.build --data_dir=~/data --world= \
        --manual=metalm_coco_karpathy:/data/coco,metalm_vqav2:/data/vqa
    python -m metalm_jax.data.build --data_dir=~/data --world= --jsonl=pets:/data/pets
    python -m metalm_jax.data.build --data_dir=~/data --world= \
        --webdataset='laion:train=gs://b/{00000..00099}.tar;validation=gs://b/00100.tar'

Builds the embedded world (`--world`, "" to skip) and trains its tokenizer
for each of `--vocab_size` (comma-separated), then builds each real data set
named in `--manual` (tfds name:folder of official files), then each of your
own data sets named in `--jsonl` (name:folder of JSONL manifests,
data/builders/jsonl.py; docs/your-data.md), and of WebDataset shards
(`--webdataset`, repeatable: name:pattern or name:split=pattern;...),
skipping bad lines and failing past `--max_bad_fraction` of them.
"""
from __future__ import annotations

from metalm_jax import absl_run
from absl import app, flags

import ml_collections as mlc

from metalm_jax.data import prepare
from metalm_jax.data import user_sets

flags.DEFINE_string("data_dir", None, "TFDS data dir", required=True)
flags.DEFINE_string("world", "tiny", "embedded world config (tiny, paper, test); '' skips it")
flags.DEFINE_string("vocab_size", "1024", "comma-separated tokenizer sizes to train")
flags.DEFINE_string("manual", "", "comma-separated name:folder of real data sets to build")
flags.DEFINE_string("jsonl", "", "comma-separated name:folder of JSONL manifests to build")
flags.DEFINE_multi_string("webdataset", [], "name:PATTERN (train) or "
                          "name:train=PATTERN;validation=PATTERN of WebDataset shards to build")
flags.DEFINE_float("max_bad_fraction", 0.1,
                   "a --jsonl build fails when more than this fraction of its lines is bad")
FLAGS = flags.FLAGS


def build(data_dir: str, world: str, vocab_sizes, manual, jsonl=(),
          max_bad_fraction: float = 0.1, webdataset=()) -> None:
  cfg = mlc.ConfigDict(dict(data_dir=data_dir, world=world or "tiny", manual_dirs=dict(manual)))
  import metalm_jax.data.builders  # noqa: F401  registers the builders
  if world:
    for v in vocab_sizes:
      path = prepare.ensure_prepared(cfg, v)
      print(f"embedded world {world!r} ready; tokenizer {path}")
  for name in dict(manual):
    prepare.ensure_manual(name, cfg)
    print(f"{name} ready in {prepare.data_dir(cfg)}")
  for name, folder in jsonl:
    path = prepare.ensure_jsonl(name, folder, cfg, max_bad_fraction)
    print(f"{name} ready in {path}: {user_sets.describe(cfg, name)}")
  for name, spec in webdataset:
    path = prepare.ensure_jsonl(name, "", cfg, max_bad_fraction, shards=spec)
    print(f"{name} ready in {path}: {user_sets.describe(cfg, name)}")


def pairs(value: str, flag: str):
  """name:folder entries of a comma-separated flag value."""
  out = [tuple(x.split(":", 1)) for x in value.split(",") if x]
  bad = [m for m in out if len(m) != 2 or not all(m)]
  if bad:
    raise app.UsageError(f"--{flag} entries must be name:folder, got {bad}")
  return out


def named(value: str, flag: str):
  """(name, rest) of one name:value flag entry (the value may hold commas)."""
  name, _, rest = value.partition(":")
  if not name or not rest:
    raise app.UsageError(f"--{flag} entries must be name:value, got {value!r}")
  return name, rest


def main(argv):
  del argv
  build(FLAGS.data_dir, FLAGS.world, [int(v) for v in FLAGS.vocab_size.split(",") if v],
        pairs(FLAGS.manual, "manual"), pairs(FLAGS.jsonl, "jsonl"), FLAGS.max_bad_fraction,
        [named(v, "webdataset") for v in FLAGS.webdataset])


if __name__ == "__main__":
  absl_run.run(main)
