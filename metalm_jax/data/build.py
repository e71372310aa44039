"""Prepare data sets ahead of a run (otherwise done on first use).

    python -m metalm_jax.data.build --data_dir=~/data --world=tiny --vocab_size=1024
    python -m metalm_jax.data.build --data_dir=~/data --world= \
        --manual=metalm_coco_karpathy:/data/coco,metalm_vqav2:/data/vqa

Builds the embedded world (`--world`, "" to skip) and trains its tokenizer
for each of `--vocab_size` (comma-separated), then builds each real data set
named in `--manual` (tfds name:folder of official files).
"""
from __future__ import annotations

from metalm_jax import absl_run
from absl import app, flags

import ml_collections as mlc

from metalm_jax.data import prepare

flags.DEFINE_string("data_dir", None, "TFDS data dir", required=True)
flags.DEFINE_string("world", "tiny", "embedded world config (tiny, paper, test); '' skips it")
flags.DEFINE_string("vocab_size", "1024", "comma-separated tokenizer sizes to train")
flags.DEFINE_string("manual", "", "comma-separated name:folder of real data sets to build")
FLAGS = flags.FLAGS


def build(data_dir: str, world: str, vocab_sizes, manual) -> None:
  cfg = mlc.ConfigDict(dict(data_dir=data_dir, world=world or "tiny", manual_dirs=dict(manual)))
  import metalm_jax.data.builders  # noqa: F401  registers the builders
  if world:
    for v in vocab_sizes:
      path = prepare.ensure_prepared(cfg, v)
      print(f"embedded world {world!r} ready; tokenizer {path}")
  for name in manual:
    prepare.ensure_manual(name, cfg)
    print(f"{name} ready in {prepare.data_dir(cfg)}")


def main(argv):
  del argv
  manual = [tuple(x.split(":", 1)) for x in FLAGS.manual.split(",") if x]
  bad = [m for m in manual if len(m) != 2 or not all(m)]
  if bad:
    raise app.UsageError(f"--manual entries must be name:folder, got {bad}")
  build(FLAGS.data_dir, FLAGS.world, [int(v) for v in FLAGS.vocab_size.split(",") if v],
        manual)


if __name__ == "__main__":
  absl_run.run(main)
