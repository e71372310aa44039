"""Input pipeline throughput: rows/s per config and Grain worker count, and
what a pod host needs to feed the fit table's step times.

    python benchmarks/input_pipeline.py --world=tiny --configs=vl:paper_vl,lang:paper_lang \
        --workers=0,1,2 --batches=40 --repeats=3 --compare_arithmetic_norm \
        --compare_all_fields --profile_batches=30 --photos=600 \
        --json_out=benchmarks/results/cpu_input_pipeline.json

`--world=tiny` overrides the embedded world for every config (e.g. to time the
paper_vl geometry, 224 px images, without building the 224 px world: the
64 px scenes are then upscaled by the pipeline).

Per config and worker count (`--workers`, a list; Grain worker processes,
`config.data.num_workers`) it prints rows/s, tokens/s and rows per CPU-second
(the CPU time of this process and its worker processes over the timed batches:
on a shared machine the wall-clock rate depends on what else runs, the CPU
cost per row less). `--repeats` keeps the fastest of several runs (each
variant of a config runs once per repeat, in turn). The timed
batches follow a warm-up long enough to drain the prefetch buffers
(`config.data.prefetch_buffer` rows per mixture entry and process), so
buffered rows are not counted as produced.

Then the demand of each row of the fit table (benchmarks/aot_rows.py, read
from its compile report benchmarks/results/aot_MODEL_TARGET.json): rows per step /
hosts / step time, at the chips' peak and at `--mfu` (40%), against the supply
per core measured here (rows per CPU-second of the workers=1 run: the worker
plus the trainer process's share of unpacking its batches), and the cores, so
worker processes of a core each, that a host needs to supply `--headroom` (2) x
the demand at `--mfu`, next to the vCPUs such a host has (HOSTS below).
`--compare_arithmetic_norm` also times each config with the image
normalisation as it was before its look-up table (in-process);
`--compare_all_fields` with every field of every record deserialised, as
before the sources named their fields (in-process); `--photos=N`
also times each vl config on N photo-sized JPEGs (`--photo_size`, 640x480) built
into --data_dir as a user's JSONL caption set, whose supply per core gives a
second column of cores per host (the embedded world's 64 px PNGs decode almost
for free, a photo does not);
`--profile_batches` gives the share of each stage (STAGES) in a cProfile. Numbers
depend on the machine and on CPU contention: state both (--json_out writes the
figures with their provenance, metalm_jax/provenance.py, load averages included).
"""
from __future__ import annotations

import glob
import json
import math
import os
import re
import sys
import time
from typing import Dict, List

from absl import flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks import aot_rows  # noqa: E402
from metalm_jax import absl_run, provenance  # noqa: E402

flags.DEFINE_string("data_dir", os.path.join("~", ".cache", "metalm_jax", "tfds"), "TFDS dir")
flags.DEFINE_string("configs", "vl:tiny,lang:tiny,vl:paper_vl", "kind:size list")
flags.DEFINE_integer("batch_size", 16, "rows per batch")
flags.DEFINE_integer("batches", 20, "timed batches (after the warm-up)")
flags.DEFINE_integer("repeats", 1, "runs per config and worker count; the fastest is kept "
                     "(all are written to --json_out)")
flags.DEFINE_integer("num_workers", 0, "Grain worker processes (when --workers is empty)")
flags.DEFINE_list("workers", [], "Grain worker counts to time, e.g. 0,1,2 (default: "
                  "--num_workers)")
flags.DEFINE_string("world", "", "override config.data.world for every config")
flags.DEFINE_string("fit_reports", os.path.join(ROOT, "benchmarks", "results"),
                    "folder of the fit table's aot reports, aot_MODEL_TARGET.json "
                    "('' = no demand table)")
flags.DEFINE_float("mfu", 0.4, "MFU at which the demand is also given")
flags.DEFINE_float("headroom", 2.0, "supply wanted per host, as a multiple of the demand at --mfu")
flags.DEFINE_bool("compare_arithmetic_norm", False,
                  "also time each config in-process (workers=0) with the image normalisation "
                  "done as float arithmetic, as before the look-up table (media/images.py)")
flags.DEFINE_bool("compare_all_fields", False,
                  "also time each config in-process (workers=0) with every field of every "
                  "record deserialised, as before Source.fields (data/sources.py)")
flags.DEFINE_integer("profile_batches", 0, "> 0: also cProfile this many batches of the first "
                     "config, in-process without read threads (so every stage is seen), with "
                     "the table and (with --compare_arithmetic_norm) the arithmetic normalisation")
flags.DEFINE_integer("photos", 0, "> 0: also time each vl config on a caption set of this many "
                     "photo-sized JPEGs (--photo_size; built once into --data_dir from a JSONL "
                     "manifest, as a user's set is), at every --workers count")
flags.DEFINE_string("photo_size", "640x480", "WIDTHxHEIGHT of the --photos JPEGs (COCO's usual)")
flags.DEFINE_string("json_out", "", "also write the figures (and their provenance) here")
FLAGS = flags.FLAGS

# A host per target: accelerator chips it feeds, vCPUs, machine type. Google
# Cloud documentation: TPU v5e VM types (ct5lp-hightpu-4t: 4 chips, 112 vCPUs,
# 192 GB; -8t: 8 chips, 224 vCPUs; a v5e-16 slice for training is 4 VMs of 4
# chips), TPU v4 and v5p VMs (ct4p-hightpu-4t: 4 chips, 240 vCPUs; ct5p-hightpu-4t:
# 4 chips, 208 vCPUs), the A3 machine series (a3-highgpu-8g: 8 H100, 208 vCPUs).
HOSTS = {
    "v5e": dict(chips=4, vcpus=112, machine="ct5lp-hightpu-4t"),
    "v4": dict(chips=4, vcpus=240, machine="ct4p-hightpu-4t"),
    "v5p": dict(chips=4, vcpus=208, machine="ct5p-hightpu-4t"),
    "h100": dict(chips=8, vcpus=208, machine="a3-highgpu-8g"),
}
# Which measured pipeline feeds a fit-table model (modern_vl trains on the
# paper_vl data: configs/pretrain_vl.py size=modern).
FEEDS = {"paper_vl": "vl:paper_vl", "modern_vl": "vl:paper_vl", "paper_lang": "lang:paper_lang"}
# A --photos run's config label: the vl config's, then this.
PHOTOS = "+photos"


def _children_cpu_s() -> float:
  """CPU seconds (user + system) so far of this process's live child
  processes (Grain workers), from /proc; 0 where there is no /proc."""
  total, me, tick = 0.0, os.getpid(), os.sysconf("SC_CLK_TCK")
  for stat in glob.glob("/proc/[0-9]*/stat"):
    try:
      with open(stat) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
      continue
    if int(fields[1]) == me:  # fields[1] is the ppid; utime, stime are fields 11, 12
      total += (int(fields[11]) + int(fields[12])) / tick
  return total


def _arithmetic_preprocess(image, image_size, mean=None, std=None):
  """media/images.preprocess_image as it was before its look-up table."""
  import numpy as np
  from PIL import Image
  from metalm_jax.media import images
  mean = images.CLIP_MEAN if mean is None else mean
  std = images.CLIP_STD if std is None else std
  if image.shape[:2] != (image_size, image_size):
    image = np.asarray(Image.fromarray(image).resize((image_size, image_size),
                                                      Image.Resampling.BICUBIC))
  x = image.astype(np.float32) / 255.0
  return (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)


def run_arithmetic(kind: str, size: str) -> dict:
  """run_one in-process with the arithmetic normalisation patched in."""
  from metalm_jax.media import images
  table = images.preprocess_image
  images.preprocess_image = _arithmetic_preprocess
  try:
    r = run_one(kind, size, 0)
  finally:
    images.preprocess_image = table
  return dict(r, image_norm="arithmetic (before)")


def run_all_fields(kind: str, size: str) -> dict:
  """run_one in-process with every source's Source.fields emptied: each
  record deserialised whole, as before the sources named their fields."""
  import dataclasses
  from unittest import mock
  from metalm_jax.data import sources
  every = {n: dataclasses.replace(sources.SOURCES.get(n), fields=()) for n in sources.SOURCES}
  with mock.patch.dict(sources.SOURCES._items, every):
    r = run_one(kind, size, 0)
  return dict(r, records="all fields (before)")


def photo_jpeg(index: int, width: int, height: int) -> bytes:
  """A photo-sized JPEG (quality 90) that compresses like a photo: smooth
  colour waves, different per `index`, plus pixel noise (~120 KB at 640 x 480,
  about a COCO image's size)."""
  import io
  import numpy as np
  from PIL import Image
  rng = np.random.default_rng(index)
  yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
  waves = [np.sin(xx / rng.uniform(20, 60) + rng.uniform(0, 6)) * rng.uniform(30, 70)
           + np.cos(yy / rng.uniform(15, 50) + rng.uniform(0, 6)) * rng.uniform(30, 70)
           for _ in range(3)]
  pixels = np.stack(waves, -1) + 128 + rng.normal(0, 12, (height, width, 3))
  out = io.BytesIO()
  Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(out, format="JPEG", quality=90)
  return out.getvalue()


def photo_size() -> tuple:
  m = re.fullmatch(r"(\d+)x(\d+)", FLAGS.photo_size)
  if not m:
    raise ValueError(f"--photo_size={FLAGS.photo_size!r}: want WIDTHxHEIGHT, e.g. 640x480")
  return int(m.group(1)), int(m.group(2))


def photo_set(data_cfg, count: int) -> str:
  """The caption set of `count` photo_jpeg images of --photo_size, built (if
  missing) into the data dir from a JSONL manifest (prepare.ensure_jsonl, as
  a user's set); returns its caption source's name."""
  import tempfile
  from metalm_jax.data import prepare
  from metalm_jax.data import user_sets
  width, height = photo_size()
  name = f"photos_{width}x{height}_{count}"
  if os.path.exists(os.path.join(user_sets.builder_dir(data_cfg, name), "dataset_info.json")):
    return f"{name}_caption"
  with tempfile.TemporaryDirectory() as folder:
    os.makedirs(os.path.join(folder, "img"))
    with open(os.path.join(folder, "train.jsonl"), "w") as manifest:
      for i in range(count):
        with open(os.path.join(folder, "img", f"{i}.jpg"), "wb") as f:
          f.write(photo_jpeg(i, width, height))
        manifest.write(json.dumps({"image": f"img/{i}.jpg",
                                   "caption": f"waves of colour number {i}."}) + "\n")
    prepare.ensure_jsonl(name, folder, data_cfg)
  return f"{name}_caption"


def run_one(kind: str, size: str, workers: int, photos: int = 0) -> dict:
  """rows/s of config kind:size with `workers` Grain workers; with `photos`,
  on the photo_set of that many JPEGs instead of the config's mixture."""
  import ml_collections as mlc
  from metalm_jax import presets
  from metalm_jax.data import pipeline
  cfg = mlc.ConfigDict(dict(model=presets.model_config(size), data=presets.data_config(kind, size),
                            seed=0))
  cfg.data.data_dir = FLAGS.data_dir
  cfg.data.num_workers = workers
  if FLAGS.world:
    cfg.data.world = FLAGS.world
  label = f"{kind}:{size}"
  if photos:
    cfg.data.mixture = {photo_set(cfg.data, photos): 1.0}
    label += PHOTOS
  buffered = cfg.data.prefetch_buffer * len(cfg.data.mixture) * max(1, workers)
  warm = 2 + math.ceil(buffered / FLAGS.batch_size)
  t0 = time.perf_counter()
  it = pipeline.make_iterator(cfg, "train", batch_size=FLAGS.batch_size)
  for _ in range(warm):
    next(it)
  setup = time.perf_counter() - t0
  rows = tokens = loss = 0
  cpu0, kids0 = time.process_time(), _children_cpu_s()
  t0 = time.perf_counter()
  for _ in range(FLAGS.batches):
    batch, _ = pipeline.split_stats(next(it))
    rows += batch["tokens"].shape[0]
    tokens += int((batch["segment_ids"] > 0).sum())
    loss += int(batch["loss_mask"].sum())
  dt = time.perf_counter() - t0
  cpu = time.process_time() - cpu0 + _children_cpu_s() - kids0
  if hasattr(it, "close"):
    it.close()
  return {"config": label, "world": cfg.data.world, "seq_len": cfg.data.seq_len,
          "mixture": dict(cfg.data.mixture),
          "photo_size": FLAGS.photo_size if photos else None,
          "workers": workers, "rows_per_s": rows / dt, "tokens_per_s": tokens / dt,
          "loss_tokens_per_s": loss / dt, "fill": tokens / (rows * cfg.data.seq_len),
          "cpu_s": cpu, "rows_per_cpu_s": rows / cpu if cpu > 0 else None,
          "cores_busy": cpu / dt, "rows": rows, "wall_s": dt, "warmup_batches": warm,
          "setup_s": setup, "image_norm": "table", "records": "named fields"}


# A run of config kind:size, by variant: (kind, size, workers, photos) -> figures.
VARIANTS = {"arithmetic": lambda kind, size, w, photos: run_arithmetic(kind, size),
            "all fields": lambda kind, size, w, photos: run_all_fields(kind, size),
            "table": run_one}


def line(r: dict) -> str:
  per_cpu = f"{r['rows_per_cpu_s']:7.1f}" if r["rows_per_cpu_s"] else "    n/a"
  return (f"{r['config']:<15} world={r['world']:<6} seq_len={r['seq_len']:<5} "
          f"workers={r['workers']} rows/s={r['rows_per_s']:8.1f} rows/cpu-s={per_cpu} "
          f"cores busy={r['cores_busy']:.2f} tokens/s={r['tokens_per_s']:10.0f} "
          f"loss_tokens/s={r['loss_tokens_per_s']:9.0f} fill={r['fill']:.2f} "
          f"(setup+warm-up {r['setup_s']:.1f}s) image_norm={r['image_norm']} "
          f"records={r['records']}")


def fit_rows(reports_dir: str) -> List[dict]:
  """The fit table's rows (benchmarks/aot_rows.py) that fit, from their
  compile reports in `reports_dir` (aot_MODEL_TARGET.json, what
  docs/aot-fit.md's table is rendered from): model, target, chips, rows per
  step, accumulation and the step time at peak. A row without a report is
  skipped and named on stderr."""
  rows = []
  if not reports_dir:
    return rows
  for model, _, topology, _ in aot_rows.ROWS:
    path = os.path.join(reports_dir, aot_rows.report_name(model, topology))
    if not os.path.exists(path):
      print(f"fit row {model}/{topology}: no report {path}; left out", file=sys.stderr)
      continue
    with open(path) as f:
      r = json.load(f)
    if r["fits"]:
      rows.append(dict(model=model, target=topology, chips=r["num_chips"],
                       rows_per_step=r["batch_size"], seq_len=r["seq_len"],
                       grad_accum_steps=r["grad_accum_steps"],
                       step_at_peak_s=r["step_time_at_peak_s"],
                       step_source=os.path.relpath(path, ROOT)))
  return rows


def _chip(target: str) -> str:
  return re.match(r"(v5e|v5p|v4|h100)", target).group(1)


def demand(fits: List[dict], measured: List[dict]) -> List[dict]:
  """Per fit row: demand per host (rows/s) at peak and at --mfu, supply per
  host core and per worker measured here, and the cores / workers a host
  needs for --headroom x the demand at --mfu."""
  by_cfg: Dict[str, Dict[int, dict]] = {}
  for r in measured:
    if r["image_norm"] == "table":
      by_cfg.setdefault(r["config"], {})[r["workers"]] = r
  out = []
  for fit in fits:
    host = HOSTS[_chip(fit["target"])]
    hosts = max(1, fit["chips"] // host["chips"])
    at_peak = fit["rows_per_step"] / hosts / fit["step_at_peak_s"]
    at_mfu = at_peak * FLAGS.mfu
    want = FLAGS.headroom * at_mfu
    feed = FEEDS.get(fit["model"], "")
    row = dict(fit, hosts=hosts, chips_per_host=host["chips"], host_vcpus=host["vcpus"],
               host_machine=host["machine"], demand_rows_per_s_at_peak=at_peak,
               demand_rows_per_s_at_mfu=at_mfu, mfu=FLAGS.mfu, headroom=FLAGS.headroom,
               supply_wanted_rows_per_s=want, fed_by=feed)
    row.update(_supply(by_cfg.get(feed, {}), want, host["vcpus"]))
    if feed.startswith("vl:") and feed + PHOTOS in by_cfg:
      photos = _supply(by_cfg[feed + PHOTOS], want, host["vcpus"])
      row.update({f"{k}_photos": v for k, v in photos.items()},
                 photo_size=next(iter(by_cfg[feed + PHOTOS].values()))["photo_size"])
    out.append(row)
  return out


def _supply(runs: Dict[int, dict], want: float, vcpus: int) -> dict:
  """Supply per core from one config's runs by worker count: rows per
  CPU-second of the one-worker run (the worker and the trainer process's share
  of unpacking its batches), else the best run's; a worker process given a
  core of its own supplies that much. With it, the cores (= workers) that
  supply `want` rows/s and their share of the host's `vcpus`."""
  one = runs.get(1) or (max(runs.values(), key=lambda r: r["rows_per_cpu_s"] or 0.0)
                        if runs else None)
  per_core = one["rows_per_cpu_s"] if one else None
  out = dict(supply_rows_per_cpu_s=per_core,
             supply_measured_with_workers=one["workers"] if one else None)
  if per_core:
    out.update(cores_needed=want / per_core, cores_share_of_host=want / per_core / vcpus,
               workers_needed=math.ceil(want / per_core))
  return out


def demand_line(d: dict) -> str:
  cores = f"{d['cores_needed']:6.1f}" if d.get("cores_needed") else "   n/a"
  share = f"{100 * d['cores_share_of_host']:5.1f}%" if d.get("cores_share_of_host") else "  n/a"
  workers = str(d.get("workers_needed", "n/a"))
  return (f"{d['model']:<11} {d['target']:<7} {d['hosts']} host(s) x {d['chips_per_host']} chips "
          f"step@peak={1e3 * d['step_at_peak_s']:7.1f}ms rows/step={d['rows_per_step']:5d} "
          f"demand/host: peak={d['demand_rows_per_s_at_peak']:7.1f} "
          f"@{100 * d['mfu']:.0f}%MFU={d['demand_rows_per_s_at_mfu']:7.1f} rows/s; "
          f"{d['headroom']:g}x needs {cores} cores ({share} of {d['host_vcpus']} vCPUs), "
          f"{workers} workers [{d['fed_by'] or 'not measured'}]" + (
              f"; with {d['photo_size']} JPEGs {d['cores_needed_photos']:.1f} cores "
              f"({100 * d['cores_share_of_host_photos']:.1f}%), {d['workers_needed_photos']} "
              f"workers" if d.get("cores_needed_photos") else ""))


def scaling(measured: List[dict]) -> Dict[str, dict]:
  """Per config with a workers=1 run: rows/s per worker and each count's
  rows/s relative to workers x the one-worker rate."""
  out = {}
  for cfg in sorted({r["config"] for r in measured}):
    runs = {r["workers"]: r for r in measured if r["config"] == cfg and r["image_norm"] == "table"}
    if 1 not in runs:
      continue
    one, one_cpu = runs[1]["rows_per_s"], runs[1]["rows_per_cpu_s"]
    out[cfg] = {"rows_per_s_per_worker": one, "rows_per_cpu_s_one_worker": one_cpu,
                "efficiency": {str(w): runs[w]["rows_per_s"] / (w * one)
                               for w in sorted(runs) if w > 0},
                "cpu_efficiency": {str(w): runs[w]["rows_per_cpu_s"] / one_cpu
                                   for w in sorted(runs) if w > 0},
                "cores_busy": {str(w): runs[w]["cores_busy"] for w in sorted(runs)}}
  return out


# Stages of a row's time in a cProfile: (label, a piece of the file's path,
# function names); their cumulative time.
STAGES = [
    ("image preprocessing (resize + normalise)", "",
     ("preprocess_image", "_arithmetic_preprocess")),
    ("  of which the bicubic resize", "PIL/Image.py", ("resize",)),
    ("image decode (to_rgb)", "media/images.py", ("to_rgb",)),
    ("record deserialisation (tfds)", "top_level_feature.py", ("deserialize_example_np",)),
    ("tokenisation", "metalm_jax/data/", ("encode",)),
    ("batch collate (stack)", "data/packing.py", ("collate",)),
]


def profile_stages(kind: str, size: str, arithmetic: bool) -> dict:
  """cProfile of --profile_batches batches (in-process, no read threads):
  seconds and share of the total per stage (STAGES), rows per profiled second."""
  import cProfile
  import pstats
  import ml_collections as mlc
  from metalm_jax import presets
  from metalm_jax.data import pipeline
  from metalm_jax.media import images
  cfg = mlc.ConfigDict(dict(model=presets.model_config(size), data=presets.data_config(kind, size),
                            seed=0))
  cfg.data.data_dir = FLAGS.data_dir
  cfg.data.num_workers, cfg.data.read_threads, cfg.data.prefetch_buffer = 0, 0, 0
  if FLAGS.world:
    cfg.data.world = FLAGS.world
  table = images.preprocess_image
  if arithmetic:
    images.preprocess_image = _arithmetic_preprocess
  try:
    it = pipeline.make_iterator(cfg, "train", batch_size=FLAGS.batch_size)
    for _ in range(3):
      next(it)
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    for _ in range(FLAGS.profile_batches):
      next(it)
    prof.disable()
    wall = time.perf_counter() - t0
  finally:
    images.preprocess_image = table
  stats = pstats.Stats(prof).stats  # {(file, line, func): (cc, nc, tt, ct, callers)}
  total = sum(v[2] for v in stats.values())
  out = {"config": f"{kind}:{size}", "image_norm": "arithmetic (before)" if arithmetic else "table",
         "rows": FLAGS.profile_batches * FLAGS.batch_size, "profiled_s": total,
         "rows_per_profiled_s": FLAGS.profile_batches * FLAGS.batch_size / wall, "stages": {}}
  for label, where, names in STAGES:
    cum = sum(v[3] for (f, _, fn), v in stats.items()
              if fn in names and where in f.replace(os.sep, "/"))
    out["stages"][label] = {"s": cum, "share": cum / total if total else None}
  return out


def best(runs: List[dict]) -> dict:
  """The fastest of repeated runs (rows/s), with every run's rows/s and rows/cpu-s."""
  top = max(runs, key=lambda r: r["rows_per_s"])
  return dict(top, repeats_rows_per_s=[r["rows_per_s"] for r in runs],
              repeats_rows_per_cpu_s=[r["rows_per_cpu_s"] for r in runs])


def image_path(number: int = 50, repeat: int = 7) -> Dict[str, float]:
  """ms per image (best of `repeat` x `number` calls: contention only adds
  time) of the steps of the 224 px path: PNG bytes -> to_rgb, the bicubic
  upscale from 64 px, the normalisation by table and by arithmetic (before)."""
  import io
  import timeit
  import numpy as np
  from PIL import Image
  from metalm_jax.media import images
  rng = np.random.default_rng(0)
  small = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
  big = rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)
  buf = io.BytesIO()
  Image.fromarray(small).save(buf, format="PNG")
  png = buf.getvalue()

  def ms(fn):
    return 1e3 * min(timeit.repeat(fn, number=number, repeat=repeat)) / number
  out = {
      "to_rgb_png64_ms": ms(lambda: images.to_rgb(png)),
      "resize_64_to_224_ms": ms(lambda: np.asarray(Image.fromarray(small).resize(
          (224, 224), Image.Resampling.BICUBIC))),
      "normalise_224_table_ms": ms(lambda: images.preprocess_image(big, 224)),
      "normalise_224_arithmetic_ms": ms(lambda: _arithmetic_preprocess(big, 224)),
      "preprocess_64_to_224_table_ms": ms(lambda: images.preprocess_image(small, 224)),
      "preprocess_64_to_224_arithmetic_ms": ms(lambda: _arithmetic_preprocess(small, 224)),
  }
  out["same_values"] = bool(np.array_equal(images.preprocess_image(small, 224),
                                           _arithmetic_preprocess(small, 224)))
  out.update(photo_path(ms))
  return out


def photo_path(ms) -> Dict[str, float]:
  """The same for a --photo_size JPEG (photo_jpeg): decode (to_rgb), the
  bicubic downscale to 224 px with the normalisation (preprocess_image), and
  both in a row; then the path not taken: PIL's
  JPEG draft mode (DCT-domain downscale while decoding, to the smallest power-
  of-two reduction still >= 224 px), its time and how far its pixels land
  from the path taken (in 0-255 levels)."""
  import io
  import numpy as np
  from PIL import Image
  from metalm_jax.media import images
  width, height = photo_size()
  jpeg = photo_jpeg(0, width, height)
  rgb, _ = images.to_rgb(jpeg)

  def draft():
    pil = Image.open(io.BytesIO(jpeg))
    pil.draft("RGB", (224, 224))
    return images.preprocess_image(np.asarray(pil.convert("RGB")), 224)
  taken = images.preprocess_image(rgb, 224)
  levels = np.abs(draft() - taken) * np.asarray(images.CLIP_STD, np.float32) * 255
  return {"photo_size": FLAGS.photo_size, "photo_jpeg_bytes": len(jpeg),
          "to_rgb_photo_ms": ms(lambda: images.to_rgb(jpeg)),
          "preprocess_photo_to_224_ms": ms(lambda: images.preprocess_image(rgb, 224)),
          "photo_to_224_ms": ms(lambda: images.preprocess_image(images.to_rgb(jpeg)[0], 224)),
          "draft_photo_to_224_ms": ms(draft),
          "draft_levels_mean": float(levels.mean()), "draft_levels_p99": float(
              np.percentile(levels, 99)), "draft_levels_max": float(levels.max())}


def _cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for text in f:
        if text.startswith("model name"):
          return text.split(":", 1)[1].strip()
  except OSError:
    pass
  return "unknown"


def main(argv):
  del argv
  begun = provenance.start()
  workers = [int(w) for w in FLAGS.workers] or [FLAGS.num_workers]
  print(f"cpus={os.cpu_count()} batch_size={FLAGS.batch_size} batches={FLAGS.batches} "
        f"load average={os.getloadavg()[0]:.2f}")
  rows, before, all_fields = [], [], []
  for item in FLAGS.configs.split(","):
    kind, size = item.split(":")
    # Every variant once per repeat, in turn, so a change of load or a warm
    # cache favours none of them.
    variants = [("arithmetic", 0, 0)] if FLAGS.compare_arithmetic_norm else []
    variants += [("all fields", 0, 0)] if FLAGS.compare_all_fields else []
    variants += [("table", w, 0) for w in workers]
    variants += [("table", w, FLAGS.photos) for w in workers] if FLAGS.photos and kind == "vl" \
        else []
    runs = {v: [] for v in variants}
    for _ in range(FLAGS.repeats):
      for variant in variants:
        runs[variant].append(VARIANTS[variant[0]](kind, size, *variant[1:]))
    for (name, _, _), tried in runs.items():
      kept = {"arithmetic": before, "all fields": all_fields}.get(name, rows)
      kept.append(best(tried))
      print(line(kept[-1]), flush=True)
  profiles = []
  if FLAGS.profile_batches > 0:
    kind, size = FLAGS.configs.split(",")[0].split(":")
    for arithmetic in ([True] if FLAGS.compare_arithmetic_norm else []) + [False]:
      profiles.append(profile_stages(kind, size, arithmetic))
      p = profiles[-1]
      print(f"profile {p['config']} image_norm={p['image_norm']}: {p['rows']} rows, "
            f"{p['profiled_s']:.2f} s profiled; " + "; ".join(
                f"{k} {100 * v['share']:.0f}%" for k, v in p["stages"].items()))
  image = image_path()
  print("image path per image (min of repeats): " + ", ".join(
      f"{k}={v:.3f}ms" for k, v in image.items() if k.endswith("_ms")) +
        f"; {FLAGS.photo_size} JPEG in draft mode: pixels {image['draft_levels_mean']:.2f} levels "
        f"from the path taken on average (p99 {image['draft_levels_p99']:.1f}, max "
        f"{image['draft_levels_max']:.1f})")
  scale = scaling(rows)
  for cfg, s in scale.items():
    eff = ", ".join(f"{w}: {e:.2f}" for w, e in s["efficiency"].items())
    cpu_eff = ", ".join(f"{w}: {e:.2f}" for w, e in s["cpu_efficiency"].items())
    busy = ", ".join(f"{w}: {b:.2f}" for w, b in s["cores_busy"].items())
    print(f"{cfg}: one worker {s['rows_per_s_per_worker']:.1f} rows/s, "
          f"{s['rows_per_cpu_s_one_worker']:.1f} rows/cpu-s; per workers: wall-clock efficiency "
          f"(rows/s / (workers x one worker's)) {eff}; rows/cpu-s relative to one worker "
          f"{cpu_eff}; cores busy {busy}")
  needs = demand(fit_rows(FLAGS.fit_reports), rows)
  for d in needs:
    print(demand_line(d))
  print(f"load average={os.getloadavg()[0]:.2f}")
  if FLAGS.json_out:
    provenance.write_json(FLAGS.json_out, {
        "cpu_model": _cpu_model(), "batch_size": FLAGS.batch_size, "batches": FLAGS.batches,
        "mfu": FLAGS.mfu, "headroom": FLAGS.headroom, "rows": rows,
        "arithmetic_norm_rows": before, "all_fields_rows": all_fields, "image_path": image,
        "profiles": profiles,
        "scaling": scale, "hosts": HOSTS,
        "demand": needs},
        begun, devices="subprocess")


if __name__ == "__main__":
  absl_run.run(main)
