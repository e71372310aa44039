"""Where the train step's time goes.

    python benchmarks/profile_step.py --config=configs/pretrain_vl.py:size=bench

1. Sub-steps, each its own jit, timed interleaved (medians): forward (logits),
   forward + loss, forward + loss + backward (value_and_grad), the optimizer
   update alone, and the whole train step.
2. Per-op trace: jax.profiler records --trace_steps whole steps (Perfetto
   JSON). Each XLA CPU thunk (a fusion, a YNNPACK matmul, a copy) is mapped
   through the compiled HLO to the JAX operation that emitted it (its
   metadata op_name), and the times are summed by part (matmuls, attention
   softmax/masks/reshapes, layer norms, MLP activation, docking and
   embeddings, loss, copies of weights into another layout, optimizer) and
   phase (forward, backward, update = everything outside the gradient),
   with the share spent in transposing / copying fusions; then the top ops.
   Thunk times are per-thunk wall times: on 2 cores two may overlap, and
   load from other processes inflates them all.
3. The timeline: wall time per step, the time with at least one thunk
   running, and the time with none. The dots XLA:CPU leaves to Eigen (a
   plain `dot` thunk, e.g. weight gradients whose left operand contracts its
   first dim) run asynchronously: their thunk returns at once, so their work
   is in "no thunk running", not in the matmul row.

--json_out (a flag of benchmarks/train_step.py, as are --config, --batch_size,
--seq_len, --steps and --warmup) writes both tables with their provenance
(metalm_jax/provenance.py).
"""
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402

from benchmarks import hlo_dots  # noqa: E402
from benchmarks import train_step as bench  # noqa: E402  (defines --config, --batch_size, ...)
from metalm_jax import absl_run  # noqa: E402

flags.DEFINE_integer("trace_steps", 3, "whole steps recorded in the trace")
flags.DEFINE_integer("top", 25, "top ops printed")
flags.DEFINE_string("trace_dir", "", "keep the trace here (default: a temporary folder)")
FLAGS = flags.FLAGS

MATMUL_THUNKS = ("ynn_fusion", "xnn_fusion", "dot", "convolution", "onednn")
PHASES = ("forward", "backward", "update")
# part -> op_name pattern (first match wins); matmuls are found by thunk name.
PARTS = (
    ("attention", r"/attn/"),
    ("layer norm", r"/(ln_attn|ln_mlp|final_norm|pre_norm)/"),
    ("mlp activation", r"/mlp/"),
    ("docking, embeddings", r"MetaLM"),
    ("loss", r"jvp\("),
    ("weight layout copies", r"^state\["),
    ("optimizer, clipping", r""),
)


def hlo_ops(hlo_text: str):
  """{instruction name: op_name} from a compiled HLO module's text."""
  out = {}
  for line in hlo_text.splitlines():
    m = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = ", line)
    if m:
      on = re.search(r'op_name="([^"]*)"', line)
      out[m.group(1)] = on.group(1) if on else ""
  return out


def classify(thunk: str, op_name: str):
  """(part, phase, is_layout) of one thunk."""
  phase = ("backward" if "transpose(jvp(" in op_name else
           "forward" if "jvp(" in op_name else "update")
  if thunk.startswith(MATMUL_THUNKS) or op_name.endswith(("dot_general", "conv_general_dilated")):
    part = "matmul"
  else:
    part = next(p for p, rx in PARTS if re.search(rx, op_name))
  return part, phase, ("copy" in thunk or "transpose" in thunk)


def thunk_events(trace_dir: str, names) -> list:
  """(name, start µs, duration µs) of every thunk in the newest Perfetto trace
  under trace_dir."""
  path = sorted(glob.glob(os.path.join(trace_dir, "plugins/profile/*/perfetto_trace.json.gz")))[-1]
  with gzip.open(path) as f:
    data = json.load(f)
  events = data["traceEvents"] if isinstance(data, dict) else data
  return [(e["name"], e["ts"], e["dur"]) for e in events
          if e.get("ph") == "X" and e.get("name") in names]


def thunk_times(events) -> dict:
  """{thunk name: total µs}."""
  out = collections.defaultdict(float)
  for name, _, dur in events:
    out[name] += dur
  return out


def is_eigen_dot(thunk: str) -> bool:
  """A plain `dot` thunk: a dot XLA:CPU left to Eigen (not a YNNPACK fusion)."""
  return re.fullmatch(r"dot(\.\d+)?", thunk) is not None


def timeline(events, steps: int) -> dict:
  """Wall time per step from the first thunk's start to the last one's end,
  the time in which at least one thunk runs, and the rest: no thunk running.
  XLA:CPU runs a plain `dot` thunk (Eigen, for the dots YNNPACK does not
  take) asynchronously: the thunk returns at once and its matmul runs in the
  thread pool, so that work shows up here, not in the part table; the rest
  is the executor's waits between dependent thunks and the host's dispatch
  between steps."""
  spans = sorted((ts, ts + dur) for _, ts, dur in events)
  busy, cur_start, cur_end = 0.0, None, None
  for a, b in spans:
    if cur_end is None or a > cur_end:
      if cur_end is not None:
        busy += cur_end - cur_start
      cur_start, cur_end = a, b
    else:
      cur_end = max(cur_end, b)
  if cur_end is not None:
    busy += cur_end - cur_start
  span = (spans[-1][1] - spans[0][0]) if spans else 0.0
  eigen = sum(1 for name, _, _ in events if is_eigen_dot(name))
  return {"span": span / 1e3 / steps, "thunks_running": busy / 1e3 / steps,
          "no_thunk_running": (span - busy) / 1e3 / steps,
          "thunks_per_step": len(events) / steps, "eigen_dots_per_step": eigen / steps}


def part_table(times: dict, ops: dict, steps: int) -> dict:
  """{part: {phase: ms per step, "total": ms, "share": of all thunks, "copy_transpose":
  ms in copying / transposing fusions}}, parts in PARTS order after "matmul"."""
  table = collections.defaultdict(float)
  layout = collections.defaultdict(float)
  for name, us in times.items():
    part, phase, is_layout = classify(name, ops[name])
    table[(part, phase)] += us / 1e3 / steps
    if is_layout:
      layout[part] += us / 1e3 / steps
  total = sum(table.values())
  out = {}
  for p in ["matmul"] + [p for p, _ in PARTS]:
    row = {ph: table[(p, ph)] for ph in PHASES}
    out[p] = dict(row, total=sum(row.values()), share=sum(row.values()) / total,
                  copy_transpose=layout[p])
  return out


def breakdown(times: dict, ops: dict, steps: int, top: int) -> str:
  table = part_table(times, ops, steps)
  lines = [f"{'part':>20} " + " ".join(f"{p:>10}" for p in PHASES) +
           f" {'total ms':>10} {'share':>6} {'copy/tr.':>9}"]
  for p, r in table.items():
    lines.append(f"{p:>20} " + " ".join(f"{r[ph]:10.1f}" for ph in PHASES) +
                 f" {r['total']:10.1f} {100 * r['share']:5.1f}% {r['copy_transpose']:9.1f}")
  col = [sum(r[ph] for r in table.values()) for ph in PHASES]
  lines.append(f"{'all thunks':>20} " + " ".join(f"{v:10.1f}" for v in col) +
               f" {sum(col):10.1f} {100.0:5.1f}% "
               f"{sum(r['copy_transpose'] for r in table.values()):9.1f}")
  lines.append(f"\ntop {top} ops (ms per step):")
  for name, us in sorted(times.items(), key=lambda kv: -kv[1])[:top]:
    lines.append(f"{us / 1e3 / steps:9.1f}  {name:32s} {ops[name]}")
  return "\n".join(lines)


def matmul_table(events, ops: dict, shapes: dict, steps: int) -> list:
  """Per (phase, shape, backend): count per step, thunk ms per step, GFLOP per
  step and GFLOP/s of thunk time (Eigen `dot` thunks return before their work
  is done: their rate is not measured and left out)."""
  rows = collections.defaultdict(lambda: [0, 0.0, 0.0])
  for name, _, dur in events:
    if name not in shapes:
      continue
    _, phase, _ = classify(name, ops[name])
    backend = "eigen (async)" if is_eigen_dot(name) else "ynnpack"
    flops, desc = shapes[name]
    r = rows[(phase, desc, backend)]
    r[0] += 1
    r[1] += dur / 1e3
    r[2] += flops / 1e9
  out = []
  for (phase, desc, backend), (n, ms, gf) in rows.items():
    out.append({"phase": phase, "shape": desc, "backend": backend, "per_step": n / steps,
                "thunk_ms": ms / steps, "gflop": gf / steps,
                "gflop_per_s": gf / ms * 1e3 if backend == "ynnpack" and ms > 0 else None})
  return sorted(out, key=lambda r: -r["thunk_ms"])


def main(argv):
  del argv
  host_malloc = bench.host_setup()
  import jax
  import numpy as np
  from metalm_jax import provenance
  from metalm_jax.train import steps as steps_lib

  begun = provenance.start()
  config = FLAGS.config
  config.batch_size = FLAGS.batch_size
  config.total_steps = max(config.total_steps, FLAGS.steps + FLAGS.warmup + 1)
  b = bench.build(config, FLAGS.batch_size, FLAGS.seq_len)
  t, batch = b.trainer, b.batch
  loss_fn = steps_lib.make_loss_fn(t.model)
  rng = jax.random.key(0)
  with t.mesh_context():
    fwd = jax.jit(lambda p, x: t.model.apply({"params": p}, x))
    loss = jax.jit(lambda p, x: loss_fn(p, x, rng))
    grad = jax.jit(jax.value_and_grad(lambda p, x: loss_fn(p, x, rng), has_aux=True))
    update = jax.jit(lambda s, g: steps_lib.apply_gradients(t.tx, s, g), donate_argnums=0)
    params = t.initial_state()["params"]
    grads = grad(params, batch)[1]
  box = {"state": b.state, "update_state": t.initial_state()}

  def step():
    box["state"], m = b.compiled(box["state"], batch)
    jax.block_until_ready(m)

  def run_update():
    box["update_state"] = update(box["update_state"], grads)
    jax.block_until_ready(box["update_state"])

  runners = {
      "forward (logits)": lambda: jax.block_until_ready(fwd(params, batch)),
      "forward + loss": lambda: jax.block_until_ready(loss(params, batch)),
      "forward + loss + backward": lambda: jax.block_until_ready(grad(params, batch)),
      "optimizer update": run_update,
      "whole train step": step,
  }
  with t.mesh_context():
    for fn in runners.values():
      for _ in range(FLAGS.warmup):
        fn()
    times, _, _ = bench._timed_blocks(runners, FLAGS.steps, 1)
  print(f"load average before timing: {os.getloadavg()[0]:.2f}")
  print(f"sub-steps, medians of {FLAGS.steps} interleaved runs ({FLAGS.batch_size} x "
        f"{FLAGS.seq_len}):")
  for name, ts in times.items():
    print(f"{name:>28}: {1e3 * np.median(ts):9.1f} ms")

  trace_dir = FLAGS.trace_dir or tempfile.mkdtemp(prefix="metalm_trace_")
  with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
    for _ in range(FLAGS.trace_steps):
      step()
  ops = hlo_ops(b.compiled.as_text())
  events = thunk_events(trace_dir, ops)
  per_thunk = thunk_times(events)
  line = timeline(events, FLAGS.trace_steps)
  matmuls = matmul_table(events, ops, hlo_dots.dot_shapes(b.compiled.as_text()),
                         FLAGS.trace_steps)
  print(f"\nwhole-step trace, {FLAGS.trace_steps} steps, XLA thunk time per step by part and "
        f"phase (trace in {trace_dir}):")
  print(breakdown(per_thunk, ops, FLAGS.trace_steps, FLAGS.top))
  print(f"\ntimeline per step: {line['span']:.1f} ms from the first thunk to the last, "
        f"{line['thunks_running']:.1f} ms with a thunk running, {line['no_thunk_running']:.1f} ms "
        f"with none (async Eigen dots: {line['eigen_dots_per_step']:.0f} per step; executor "
        f"waits; dispatch); {line['thunks_per_step']:.0f} thunks per step")
  print("\nmatmuls by phase and shape (M x K x N), per step:")
  for r in matmuls:
    rate = f"{r['gflop_per_s']:7.1f} GFLOP/s" if r["gflop_per_s"] else "   (async)     "
    print(f"{r['thunk_ms']:8.1f} ms {rate} x{r['per_step']:<3.0f} {r['phase']:8s} "
          f"{r['backend']:13s} {r['shape']}")
  if FLAGS.json_out:  # defined by train_step
    provenance.write_json(FLAGS.json_out, {
        "batch": f"{FLAGS.batch_size} x {FLAGS.seq_len}", "steps": FLAGS.steps,
        "host_malloc": host_malloc,
        "sub_step_ms_median": {k: 1e3 * float(np.median(v)) for k, v in times.items()},
        "trace_steps": FLAGS.trace_steps,
        "thunk_ms_per_step": part_table(per_thunk, ops, FLAGS.trace_steps),
        "timeline_ms_per_step": line, "matmuls": matmuls}, begun)


if __name__ == "__main__":
  absl_run.run(main)
