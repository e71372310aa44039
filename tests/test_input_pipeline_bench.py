"""benchmarks/input_pipeline.py reads the fit table and turns each row into a
demand per host; run in a subprocess (the script defines absl flags)."""
import json
import math
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_SCRIPT = """
import json, sys
sys.path.insert(0, "benchmarks")
import input_pipeline as ip
ip.FLAGS(["input_pipeline"])
fits = ip.fit_rows(ip.FLAGS.fit_reports)
runs = [dict(config="vl:paper_vl", workers=1, rows_per_s=250.0, rows_per_cpu_s=300.0,
             image_norm="table", cores_busy=1.0),
        dict(config="vl:paper_vl", workers=2, rows_per_s=450.0, rows_per_cpu_s=290.0,
             image_norm="table", cores_busy=1.0),
        dict(config="lang:paper_lang", workers=0, rows_per_s=50.0, rows_per_cpu_s=80.0,
             image_norm="table", cores_busy=1.0),
        dict(config="vl:paper_vl+photos", workers=0, rows_per_s=160.0, rows_per_cpu_s=170.0,
             image_norm="table", cores_busy=1.0, photo_size="640x480"),
        dict(config="vl:paper_vl+photos", workers=1, rows_per_s=140.0, rows_per_cpu_s=150.0,
             image_norm="table", cores_busy=1.0, photo_size="640x480")]
other = ip.fit_rows(sys.argv[1])
print(json.dumps({"demand": ip.demand(fits, runs), "scaling": ip.scaling(runs), "other": other}))
"""


def _other_reports(folder):
  """A reports folder of its own: paper_lang h100x8 at 8 accumulation steps
  and another step time, paper_vl v5e-16 that does not fit, the rest absent."""
  def report(model, topology, **changes):
    with open(os.path.join(ROOT, "benchmarks", "results", f"aot_{model}_{topology}.json")) as f:
      r = json.load(f)
    r.update(changes)
    (folder / f"aot_{model}_{topology}.json").write_text(json.dumps(r))
  report("paper_lang", "h100x8", grad_accum_steps=8, step_time_at_peak_s=2.547)
  report("paper_vl", "v5e-16", fits=False)


def test_demand_per_fit_table_row(tmp_path):
  _other_reports(tmp_path)
  p = subprocess.run([sys.executable, "-c", _SCRIPT, str(tmp_path)], cwd=ROOT,
                     capture_output=True, text=True, timeout=300)
  assert p.returncode == 0, p.stderr[-2000:]
  out = json.loads(p.stdout.strip().splitlines()[-1])
  rows = {(d["model"], d["target"], d["grad_accum_steps"]): d for d in out["demand"]}
  v5e = rows[("paper_vl", "v5e-16", 1)]
  assert (v5e["hosts"], v5e["chips_per_host"], v5e["host_vcpus"]) == (4, 4, 112)
  assert abs(v5e["step_at_peak_s"] - 0.0545) < 1e-3  # the aot report's exact step
  assert abs(v5e["demand_rows_per_s_at_peak"] - 256 / 4 / v5e["step_at_peak_s"]) < 1e-6
  assert abs(v5e["demand_rows_per_s_at_mfu"] - 0.4 * v5e["demand_rows_per_s_at_peak"]) < 1e-6
  assert v5e["supply_rows_per_cpu_s"] == 300.0  # the one-worker run's
  assert v5e["workers_needed"] == math.ceil(2 * v5e["demand_rows_per_s_at_mfu"] / 300.0)
  h100 = rows[("paper_vl", "h100x8", 1)]
  assert (h100["hosts"], h100["chips_per_host"]) == (1, 8)
  assert rows[("paper_lang", "v5e-16", 16)]["fed_by"] == "lang:paper_lang"
  assert ("paper_lang", "v5e-16", 64) not in rows  # only the table's rows, none invented
  lang_h100 = rows[("paper_lang", "h100x8", 4)]
  assert lang_h100["fed_by"] == "lang:paper_lang" and lang_h100["chips"] == 8
  # Every figure comes from the row's report; a row that does not fit, or has no
  # report, is left out.
  other = out["other"]
  assert [(r["model"], r["target"], r["grad_accum_steps"]) for r in other] == [
      ("paper_lang", "h100x8", 8)]
  assert abs(other[0]["step_at_peak_s"] - 2.547) < 1e-9
  assert other[0]["step_source"].endswith("aot_paper_lang_h100x8.json")
  assert "paper_vl/v4-16: no report" in p.stderr
  assert {d["model"] for d in out["demand"]} == {"paper_vl", "modern_vl", "paper_lang"}
  s = out["scaling"]["vl:paper_vl"]
  assert s["rows_per_s_per_worker"] == 250.0 and abs(s["efficiency"]["2"] - 0.9) < 1e-9
  # Photo-sized JPEGs: a second supply (its one-worker run) for the vl rows only.
  want = 2 * v5e["demand_rows_per_s_at_mfu"]
  assert v5e["supply_rows_per_cpu_s_photos"] == 150.0 and v5e["photo_size"] == "640x480"
  assert abs(v5e["cores_needed_photos"] - want / 150.0) < 1e-9
  assert v5e["workers_needed_photos"] == math.ceil(want / 150.0)
  assert abs(v5e["cores_share_of_host_photos"] - want / 150.0 / 112) < 1e-12
  assert v5e["cores_needed"] == want / 300.0  # the world's supply is unchanged
  assert "cores_needed_photos" not in lang_h100


_PHOTOS = """
import json, os, sys
sys.path.insert(0, "benchmarks")
import input_pipeline as ip
data_dir = sys.argv[1]
ip.FLAGS(["input_pipeline", "--data_dir=" + data_dir, "--world=test", "--photo_size=96x64",
          "--batch_size=2", "--batches=1"])
row = ip.run_one("vl", "tiny", 0, photos=3)
info = os.path.join(data_dir, "metalm_jsonl", "photos_96x64_3", "1.0.0", "dataset_info.json")
built = os.path.getmtime(info)
import ml_collections as mlc
name = ip.photo_set(mlc.ConfigDict({"data_dir": data_dir}), 3)  # already there: not rebuilt
import io
import numpy as np
from PIL import Image
big = ip.photo_jpeg(0, 640, 480)
img = Image.open(io.BytesIO(big))
print(json.dumps({"row": row, "rebuilt": os.path.getmtime(info) != built, "name": name,
                  "photo": ip.photo_path(lambda fn: 0.0),
                  "big": [img.format, list(img.size), len(big), float(np.asarray(img).std()),
                          ip.photo_jpeg(0, 640, 480) == big, ip.photo_jpeg(1, 640, 480) == big]}))
"""


def test_photos_build_a_user_set_and_feed_the_pipeline(tmp_path):
  """--photos: JPEGs of --photo_size built once into the data dir as a JSONL
  caption set, read by the vl pipeline in place of its mixture."""
  p = subprocess.run([sys.executable, "-c", _PHOTOS, str(tmp_path)], cwd=ROOT,
                     capture_output=True, text=True, timeout=300)
  assert p.returncode == 0, p.stderr[-2000:]
  out = json.loads(p.stdout.strip().splitlines()[-1])
  row = out["row"]
  assert row["config"] == "vl:tiny+photos" and row["photo_size"] == "96x64"
  assert row["mixture"] == {"photos_96x64_3_caption": 1.0} and row["rows"] == 2
  assert out["name"] == "photos_96x64_3_caption" and not out["rebuilt"]
  photo = out["photo"]
  assert photo["photo_size"] == "96x64" and photo["photo_jpeg_bytes"] > 2000
  # Smaller than 224 px: draft mode cannot reduce, so its pixels are the path's.
  assert photo["draft_levels_max"] == 0.0
  fmt, size, nbytes, std, same, other = out["big"]
  assert fmt == "JPEG" and size == [640, 480] and same and not other
  assert 60_000 < nbytes < 250_000 and std > 20  # compresses like a photo, not flat colour

