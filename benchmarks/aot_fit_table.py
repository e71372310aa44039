"""The AOT fit table: compiles each row of benchmarks/aot_rows.py for its
target with launch/aot.sh (one process per row, TPU rows in .venv-aot, GPU
rows in .venv-aot-gpu) and prints a markdown table.

    python benchmarks/aot_fit_table.py --out=/tmp/fit/table.md   # every row: 1-4 min each here
    python benchmarks/aot_fit_table.py --rows=paper_vl/v5e-16,paper_lang/h100x8 \
        --extra=--config.model.decoder.remat_policy=dots_with_no_batch_dims_saveable \
        --out=/tmp/fit.md

--extra (repeatable) is appended to every row's overrides, e.g. a remat
policy or scan option to compare. The JSON report of each row is kept next
to --out when --out is given, named as benchmarks/results/ holds it
(aot_MODEL_TARGET.json); metalm_jax/aot.py writes it with its provenance
(metalm_jax/provenance.py: commit, versions, the compile host's load
average). docs/aot-fit.md's table is rendered from the reports in
benchmarks/results/ by `python benchmarks/perf_tables.py`. Compile times are wall-clock on this
machine: load from other processes inflates them.
"""
import json
import os
import subprocess
import sys
import tempfile

from absl import app, flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

from benchmarks.aot_rows import HEADER, ROWS, SEPARATOR, report_name, table_row  # noqa: E402
from metalm_jax import absl_run  # noqa: E402

flags.DEFINE_list("rows", [], "MODEL/TOPOLOGY rows to run (default: all)")
flags.DEFINE_multi_string("extra", [], "override appended to every row")
flags.DEFINE_string("out", "", "write the markdown table here (and each row's "
                    "aot_MODEL_TARGET.json beside it)")
flags.DEFINE_integer("timeout", 7200, "seconds per row")
FLAGS = flags.FLAGS


def run_row(model, config, topology, overrides, json_path):
  cmd = ["bash", os.path.join(ROOT, "launch", "aot.sh"), f"--config={config}",
         f"--topology={topology}", f"--report={json_path}", *overrides]
  print("$ " + " ".join(cmd[1:]), file=sys.stderr, flush=True)
  try:
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=FLAGS.timeout)
  except subprocess.TimeoutExpired:
    return f"| {model} | {topology} | not finished within --timeout={FLAGS.timeout} s |"
  print(p.stdout, file=sys.stderr, flush=True)
  if p.returncode not in (0, 3) or not os.path.exists(json_path):
    tail = (p.stderr.strip().splitlines() or ["?"])[-1]
    return f"| {model} | {topology} | failed (exit {p.returncode}): {tail[:200]} |"
  with open(json_path) as f:
    return table_row(model, json.load(f))


def main(argv):
  del argv
  known = {f"{m}/{t}" for m, _, t, _ in ROWS}
  for r in FLAGS.rows:
    if r not in known:
      raise app.UsageError(f"--rows: {r!r} is not a row; known: {sorted(known)}")
  rows = [r for r in ROWS if not FLAGS.rows or f"{r[0]}/{r[2]}" in FLAGS.rows]
  out_dir = os.path.dirname(os.path.abspath(FLAGS.out)) if FLAGS.out else tempfile.mkdtemp()
  lines = [HEADER, SEPARATOR]
  for model, config, topology, overrides in rows:
    path = os.path.join(out_dir, report_name(model, topology))
    lines.append(run_row(model, config, topology, overrides + FLAGS.extra, path))
    print(lines[-1], file=sys.stderr, flush=True)
  text = "\n".join(lines) + "\n"
  print(text)
  if FLAGS.out:
    with open(FLAGS.out, "w") as f:
      f.write(text)


if __name__ == "__main__":
  absl_run.run(main)
