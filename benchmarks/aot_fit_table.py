"""The README's AOT fit table: compiles each row's train step for its target
with launch/aot.sh (one process per row, TPU rows in .venv-aot, GPU rows in
.venv-aot-gpu) and prints a markdown table.

    python benchmarks/aot_fit_table.py   # every row: paper sizes 15-40 min each on 2 shared cores
    python benchmarks/aot_fit_table.py --rows=paper_vl/v5e-16,paper_lang/h100x8 \
        --extra=--config.model.decoder.remat_policy=dots_with_no_batch_dims_saveable \
        --out=/tmp/fit.md

--extra (repeatable) is appended to every row's overrides, e.g. a remat
policy or scan option to compare. The JSON report of each row is kept next
to --out (ROW.json) when --out is given; metalm_jax/aot.py writes it with its
provenance (metalm_jax/provenance.py: commit, versions, the compile host's
load average). Compile times are wall-clock on this machine: load from other
processes inflates them.
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

from metalm_jax import absl_run  # noqa: E402

# (model, config, topology, overrides). Meshes: FSDP over every chip
# (mesh.fsdp=-1 in the paper configs). paper_lang keeps the paper's batch of
# 1024 x 2048 tokens through gradient accumulation.
# paper_lang on TPU: splash attention in the decoder and the language encoder
# (what `auto` picks on a TPU; this CPU host must name it) and the loss in
# chunks of 256 positions (no float32 [B, L, 64000] logits): 16 micro-batches
# fit a v5e (11.41 GiB per chip; 64 were needed with XLA attention and full
# logits, which at 16 took 20.27 GiB).
_LANG_TPU = ["--config.model.decoder.attention_impl=splash",
             "--config.model.encoders.text.attention_impl=splash",
             "--config.model.decoder.loss_chunk=256"]
# The VL rows: the decoder's attention as `auto` picks it on a TPU (the ViT's
# 197 tokens are not a multiple of 128: XLA, as `auto` there) and the loss in
# chunks of 64 of the 256 positions on every target (no float32 [B, L, V]
# logits; a chunk of 256 is the whole sequence: one chunk, no saving).
_CHUNK = ["--config.model.decoder.loss_chunk=64"]
_VL_TPU = ["--config.model.decoder.attention_impl=splash"] + _CHUNK
ROWS = [
    ("paper_vl", "configs/pretrain_vl.py:size=paper", "v5e-16", _VL_TPU),
    ("paper_vl", "configs/pretrain_vl.py:size=paper", "v4-16", _VL_TPU),
    ("paper_vl", "configs/pretrain_vl.py:size=paper", "v5p-16", _VL_TPU),
    ("paper_vl", "configs/pretrain_vl.py:size=paper", "h100x8", _CHUNK),
    ("paper_lang", "configs/pretrain_lang.py:size=paper", "v5e-16",
     _LANG_TPU + ["--config.optimizer.grad_accum_steps=16"]),
    ("paper_lang", "configs/pretrain_lang.py:size=paper", "v4-16",
     _LANG_TPU + ["--config.optimizer.grad_accum_steps=16"]),
    ("paper_lang", "configs/pretrain_lang.py:size=paper", "v5p-16",
     _LANG_TPU + ["--config.optimizer.grad_accum_steps=4"]),
    # On a GPU `auto` picks cuDNN flash attention; this CPU host must name it.
    ("paper_lang", "configs/pretrain_lang.py:size=paper", "h100x8",
     ["--config.model.decoder.attention_impl=cudnn",
      "--config.model.encoders.text.attention_impl=cudnn",
      "--config.model.decoder.loss_chunk=256", "--config.optimizer.grad_accum_steps=4"]),
    # Llama-3.2-1B-shaped decoder + SigLIP-B/16-shaped ViT (presets.modern_vl).
    ("modern_vl", "configs/pretrain_vl.py:size=modern", "v5e-16", _VL_TPU),
    ("modern_vl", "configs/pretrain_vl.py:size=modern", "h100x8", _CHUNK),
]

flags.DEFINE_list("rows", [], "MODEL/TOPOLOGY rows to run (default: all)")
flags.DEFINE_multi_string("extra", [], "override appended to every row")
flags.DEFINE_string("out", "", "write the markdown table here (and ROW.json beside it)")
flags.DEFINE_integer("timeout", 7200, "seconds per row")
FLAGS = flags.FLAGS

HEADER = ("| model | target | mesh (data, fsdp, tensor) | batch x tokens (accum) | "
          "remat / stack options | memory per chip | HBM | fits | compile (s) | "
          "model TFLOP/step | step at peak (ms) |")


def _gib(n):
  return f"{n / 2 ** 30:.2f} GiB"


def _options(stacks):
  parts = []
  for stack, opts in stacks.items():
    if opts:
      parts.append(f"{stack.replace('encoders.', '')}: " +
                   ", ".join(f"{k}={v}" for k, v in opts.items()))
  return "; ".join(parts) or "-"


def table_row(model, r):
  m = r["mesh"]
  mem = _gib(r["total_bytes"]) if "total_bytes" in r else "> HBM (RESOURCE_EXHAUSTED)"
  options = _options(r["stacks"])
  chunk = r.get("overrides", {}).get("model.decoder.loss_chunk")
  if chunk:
    options += f"; loss in chunks of {chunk} positions"
  return (f"| {model} | {r['topology']} ({r['num_chips']} chips) | "
          f"{m['data']}, {m['fsdp']}, {m['tensor']} | {r['batch_size']} x {r['seq_len']} "
          f"({r['grad_accum_steps']}) | {options} | {mem} | "
          f"{_gib(r['hbm_bytes'])} | {'yes' if r['fits'] else 'no'} | {r['compile_s']:.0f} | "
          f"{r['model_flops_per_step'] / 1e12:.1f} | {r['step_time_at_peak_s'] * 1e3:.0f} |")


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
  lines = [HEADER, "|" + "---|" * HEADER.count(" | ") + "---|"]
  for model, config, topology, overrides in rows:
    path = os.path.join(out_dir, f"{model}_{topology}.json")
    lines.append(run_row(model, config, topology, overrides + FLAGS.extra, path))
    print(lines[-1], file=sys.stderr, flush=True)
  text = "\n".join(lines) + "\n"
  print(text)
  if FLAGS.out:
    with open(FLAGS.out, "w") as f:
      f.write(text)


if __name__ == "__main__":
  absl_run.run(main)
