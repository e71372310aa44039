"""Build speed of your own data (docs/your-data.md): --rows JPEG images of
--image_size px (noise, so they do not compress away) with one caption each,
written once as a JSONL manifest with image files and once as --shards
WebDataset tars, then each built into a fresh data dir
(prepare.ensure_jsonl: every line checked, images decoded, array_record
written). Prints rows/s per input; wall-clock on this machine, local disk
(load from other processes inflates it).

    python benchmarks/build_your_data.py --rows=2000 --image_size=256 --shards=4

--json_out writes the figures with their provenance (metalm_jax/provenance.py).
"""
import io
import json
import os
import tarfile
import tempfile
import time

import ml_collections as mlc
import numpy as np
from absl import flags
from PIL import Image

from metalm_jax import absl_run, provenance
from metalm_jax.data import prepare

flags.DEFINE_integer("rows", 2000, "images (one caption each)")
flags.DEFINE_integer("image_size", 256, "image side in pixels")
flags.DEFINE_integer("shards", 4, "WebDataset tars the rows are split into")
flags.DEFINE_string("json_out", "", "also write the figures (and their provenance) here")
FLAGS = flags.FLAGS


def _jpegs(n: int, size: int):
  rng = np.random.default_rng(0)
  for i in range(n):
    out = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(
        out, format="JPEG", quality=90)
    yield i, out.getvalue()


def _write_inputs(root: str, n: int, size: int, shards: int) -> str:
  """FOLDER (train.jsonl + img/) and shards/{00000..}.tar; returns the shard pattern."""
  os.makedirs(os.path.join(root, "folder", "img"))
  os.makedirs(os.path.join(root, "shards"))
  per = -(-n // shards)
  tars = [tarfile.open(os.path.join(root, "shards", f"{k:05d}.tar"), "w") for k in range(shards)]
  with open(os.path.join(root, "folder", "train.jsonl"), "w") as manifest:
    for i, data in _jpegs(n, size):
      with open(os.path.join(root, "folder", "img", f"{i}.jpg"), "wb") as f:
        f.write(data)
      caption = f"picture number {i}."
      manifest.write(json.dumps({"image": f"img/{i}.jpg", "caption": caption}) + "\n")
      for ext, blob in (("jpg", data), ("txt", caption.encode()),
                        ("json", json.dumps({"key": f"{i:09d}"}).encode())):
        info = tarfile.TarInfo(f"{i:09d}.{ext}")
        info.size = len(blob)
        tars[i // per].addfile(info, io.BytesIO(blob))
  for t in tars:
    t.close()
  return os.path.join(root, "shards", "{00000..%05d}.tar" % (shards - 1))


def _rate(root: str, name: str, folder: str = "", shards: str = "") -> float:
  """Rows/s of building `name` from `folder` or `shards` into a fresh data dir."""
  cfg = mlc.ConfigDict(dict(data_dir=os.path.join(root, f"tfds_{name}"), world="tiny",
                            manual_dirs={}))
  start = time.perf_counter()
  prepare.ensure_jsonl(name, folder, cfg, shards=shards)
  return FLAGS.rows / (time.perf_counter() - start)


def main(argv):
  del argv
  begun = provenance.start()
  with tempfile.TemporaryDirectory() as root:
    pattern = _write_inputs(root, FLAGS.rows, FLAGS.image_size, FLAGS.shards)
    mb = sum(os.path.getsize(os.path.join(root, "folder", "img", f))
             for f in os.listdir(os.path.join(root, "folder", "img"))) / 1e6
    jsonl = _rate(root, "bench_jsonl", folder=os.path.join(root, "folder"))
    web = _rate(root, "bench_web", shards=pattern)
  print(f"{FLAGS.rows} JPEGs of {FLAGS.image_size} px ({mb:.0f} MB): "
        f"JSONL manifest {jsonl:.0f} rows/s, {FLAGS.shards} WebDataset shards {web:.0f} rows/s")
  if FLAGS.json_out:
    provenance.write_json(FLAGS.json_out, {
        "rows": FLAGS.rows, "image_size": FLAGS.image_size, "shards": FLAGS.shards,
        "images_mb": mb, "jsonl_rows_per_s": jsonl, "webdataset_rows_per_s": web},
        begun, devices="subprocess")


if __name__ == "__main__":
  absl_run.run(main)
