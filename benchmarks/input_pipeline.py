"""Input pipeline throughput: rows/s and real tokens/s per config.

    python benchmarks/input_pipeline.py --data_dir=/tmp/metalm_data \
        --configs=vl:tiny,lang:tiny,vl:paper_vl --batch_size=16 --batches=20 --num_workers=0

`--world=tiny` overrides the embedded world for every config (e.g. to time the
paper_vl geometry, 224 px images, without building the 224 px world: the
64 px scenes are then upscaled by the pipeline). Prints one line per config;
numbers depend on the machine and on CPU contention, so also state both.
--json_out writes the figures with their provenance (metalm_jax/provenance.py).
"""
from __future__ import annotations

import os
import sys
import time

from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from metalm_jax import absl_run, provenance  # noqa: E402

flags.DEFINE_string("data_dir", os.path.join("~", ".cache", "metalm_jax", "tfds"), "TFDS dir")
flags.DEFINE_string("configs", "vl:tiny,lang:tiny,vl:paper_vl", "kind:size list")
flags.DEFINE_integer("batch_size", 16, "rows per batch")
flags.DEFINE_integer("batches", 20, "timed batches (after 2 warm-up batches)")
flags.DEFINE_integer("num_workers", 0, "Grain worker processes")
flags.DEFINE_string("world", "", "override config.data.world for every config")
flags.DEFINE_string("json_out", "", "also write the figures (and their provenance) here")
FLAGS = flags.FLAGS


def run_one(kind: str, size: str) -> dict:
  import ml_collections as mlc
  from metalm_jax import presets
  from metalm_jax.data import pipeline
  cfg = mlc.ConfigDict(dict(model=presets.model_config(size), data=presets.data_config(kind, size),
                            seed=0))
  cfg.data.data_dir = FLAGS.data_dir
  cfg.data.num_workers = FLAGS.num_workers
  if FLAGS.world:
    cfg.data.world = FLAGS.world
  t0 = time.perf_counter()
  it = pipeline.make_iterator(cfg, "train", batch_size=FLAGS.batch_size)
  for _ in range(2):
    next(it)
  setup = time.perf_counter() - t0
  rows = tokens = loss = 0
  t0 = time.perf_counter()
  for _ in range(FLAGS.batches):
    batch, _ = pipeline.split_stats(next(it))
    rows += batch["tokens"].shape[0]
    tokens += int((batch["segment_ids"] > 0).sum())
    loss += int(batch["loss_mask"].sum())
  dt = time.perf_counter() - t0
  if hasattr(it, "close"):
    it.close()
  return {"config": f"{kind}:{size}", "world": cfg.data.world, "seq_len": cfg.data.seq_len,
          "workers": FLAGS.num_workers, "rows_per_s": rows / dt, "tokens_per_s": tokens / dt,
          "loss_tokens_per_s": loss / dt, "fill": tokens / (rows * cfg.data.seq_len),
          "setup_s": setup}


def line(r: dict) -> str:
  return (f"{r['config']:<15} world={r['world']:<6} seq_len={r['seq_len']:<5} "
          f"workers={r['workers']} rows/s={r['rows_per_s']:8.1f} "
          f"tokens/s={r['tokens_per_s']:10.0f} loss_tokens/s={r['loss_tokens_per_s']:9.0f} "
          f"fill={r['fill']:.2f} (setup+warm-up {r['setup_s']:.1f}s)")


def main(argv):
  del argv
  begun = provenance.start()
  print(f"cpus={os.cpu_count()} batch_size={FLAGS.batch_size} batches={FLAGS.batches}")
  rows = []
  for item in FLAGS.configs.split(","):
    kind, size = item.split(":")
    rows.append(run_one(kind, size))
    print(line(rows[-1]), flush=True)
  if FLAGS.json_out:
    provenance.write_json(FLAGS.json_out, {"batch_size": FLAGS.batch_size,
                                           "batches": FLAGS.batches, "rows": rows},
                          begun, devices="subprocess")


if __name__ == "__main__":
  absl_run.run(main)
