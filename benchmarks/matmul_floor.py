"""The train step's matmuls alone, timed in turn with the step and the
PyTorch reference: how much of the step's time the matmul kernels leave for
everything else.

    python benchmarks/matmul_floor.py --config=configs/pretrain_vl.py:size=bench \
        --steps=30 --json_out=FILE

It compiles the step (benchmarks/train_step.py `build`) and lists the dots
one step runs from its compiled HLO (benchmarks/hlo_dots.py `executed_dots`:
the same shapes and counts as profile_step's traced matmul table), then
compiles a program of the same dots alone: each with operands of its own
(random float32, made once) in the plain layout, [batch x] M x K times K x N,
all independent of one another. That is the easiest form of the step's matmul
work for XLA:CPU (no transposed operands, so no Eigen fallbacks; any order and
any concurrency), so its time is a floor under the step's with these
kernels. The same matmuls in torch (`torch.matmul`, its own kernels, on the
threads the reference uses) are torch's floor. The two programs, our step and
the torch reference (benchmarks/torch_reference.py, as train_step.py
--compare_torch) run blocks of --block steps in turn until each has --steps.
Printed and written (--json_out, with provenance): the dots and their GFLOP
per step, the four medians, the floor's GFLOP/s and the 1024^2 matmul peak
measured in the run, the step time that 1.2x the torch reference's speed asks
(its median / 1.2) and our floor's share of it, what each step spends
beyond its own framework's floor, and the cores the process may use (run it
under `taskset -c 0 ... --torch_threads=1` for one core: no two thunks, nor
two torch threads, share the time, so what is beyond the floor is work).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402

from benchmarks import hlo_dots  # noqa: E402
from benchmarks import train_step as bench  # noqa: E402  (--config, --steps, --block, ...)
from metalm_jax import absl_run  # noqa: E402

flags.DEFINE_float("target", 1.2, "speed over the torch reference the step is asked for")
FLAGS = flags.FLAGS


def plain_operands(dots, seed: int = 0) -> list:
  """[(a, b)]: random float32 numpy operands, [batch x] M x K and K x N, for
  every (FLOPs, dims) of `dots`."""
  import numpy as np
  rng = np.random.default_rng(seed)
  out = []
  for _, dims in dots:
    *batch, m, k, n = (int(v) for v in dims.split(" x "))
    out.append((rng.standard_normal((*batch, m, k), dtype=np.float32),
                rng.standard_normal((*batch, k, n), dtype=np.float32)))
  return out


def floor_program(dots, seed: int = 0):
  """(jitted fn, its operands): every dot of `dots` as a plain matmul of
  operands of its own; fn(operands) returns every product."""
  import jax
  import jax.numpy as jnp
  operands = [(jnp.asarray(a), jnp.asarray(b)) for a, b in plain_operands(dots, seed)]
  return jax.jit(lambda ops: [jnp.matmul(a, b) for a, b in ops]), operands


def torch_floor_program(dots, seed: int = 0):
  """The same plain matmuls in torch (its own kernels, on the threads
  torch_reference sets): a no-argument fn running them all."""
  import torch
  operands = [(torch.from_numpy(a), torch.from_numpy(b)) for a, b in plain_operands(dots, seed)]

  def run():
    with torch.no_grad():
      for a, b in operands:
        torch.matmul(a, b)
  return run


def main(argv):
  del argv
  bench.torch_omp_env()
  host_malloc = bench.host_setup()
  import jax
  import numpy as np
  from benchmarks import torch_reference
  from metalm_jax import provenance
  from metalm_jax.train import metrics as metrics_lib
  begun = provenance.start()
  config = FLAGS.config
  config.batch_size = FLAGS.batch_size
  config.total_steps = max(config.total_steps, FLAGS.steps + FLAGS.warmup + 1)
  b = bench.build(config, FLAGS.batch_size, FLAGS.seq_len)
  dots = hlo_dots.executed_dots(b.compiled.as_text())
  fn, operands = floor_program(dots, seed=int(config.seed))
  box = {"state": b.state}

  def ours():
    box["state"], m = b.compiled(box["state"], b.batch)
    jax.block_until_ready(m)

  ref = torch_reference.TorchBench(config, b.np_batch, threads=FLAGS.torch_threads,
                                   seed=config.seed)
  runners = {"jax": ours, "matmuls": lambda: jax.block_until_ready(fn(operands)),
             "torch": ref.step, "torch_matmuls": torch_floor_program(dots, seed=int(config.seed))}
  for _ in range(FLAGS.warmup):
    for run in runners.values():
      run()
  peak = metrics_lib.measure_matmul_peak(FLAGS.matmul_size, np.float32)
  times, _, _ = bench._timed_blocks(runners, FLAGS.steps, FLAGS.block)
  peak = max(peak, metrics_lib.measure_matmul_peak(FLAGS.matmul_size, np.float32))
  med = {k: float(np.median(v)) for k, v in times.items()}
  gflop = sum(f for f, _ in dots) / 1e9
  target_s = med["torch"] / FLAGS.target
  out = {
      "batch": f"{FLAGS.batch_size} x {FLAGS.seq_len}",
      "dots_per_step": len(dots),
      "matmul_gflop_per_step": gflop,
      "floor_ms_median": 1e3 * med["matmuls"],
      "floor_ms_min": 1e3 * min(times["matmuls"]),
      "step_ms_median": 1e3 * med["jax"],
      "torch_step_ms_median": 1e3 * med["torch"],
      "floor_gflop_per_s": gflop / med["matmuls"],
      "matmul_peak_gflop_per_s": peak / 1e9,
      "floor_ms_at_peak": 1e3 * gflop * 1e9 / peak,
      "target_speed_over_torch": FLAGS.target,
      "target_step_ms": 1e3 * target_s,
      "floor_share_of_target": med["matmuls"] / target_s,
      "torch_floor_ms_median": 1e3 * med["torch_matmuls"],
      "torch_floor_gflop_per_s": gflop / med["torch_matmuls"],
      "beyond_floor_ms": 1e3 * (med["jax"] - med["matmuls"]),
      "torch_beyond_torch_floor_ms": 1e3 * (med["torch"] - med["torch_matmuls"]),
      "step_over_floor": med["jax"] / med["matmuls"],
      "torch_over_floor": med["torch"] / med["matmuls"],
      "cores": len(os.sched_getaffinity(0)),
      "torch_threads": FLAGS.torch_threads,
      "host_malloc": host_malloc,
      "load_average_1min": os.getloadavg()[0],
  }
  bench._print(out)
  print(f"the step's {len(dots)} matmuls alone ({gflop:.1f} GFLOP, plain layouts, independent): "
        f"{out['floor_ms_median']:.1f} ms ({out['floor_gflop_per_s']:.0f} GFLOP/s; the 1024^2 "
        f"peak {out['matmul_peak_gflop_per_s']:.0f}); our step {out['step_ms_median']:.1f} ms, "
        f"torch {out['torch_step_ms_median']:.1f} ms (medians of {FLAGS.steps}, in blocks of "
        f"{FLAGS.block}); {FLAGS.target:g}x torch asks for {out['target_step_ms']:.1f} ms, of "
        f"which the matmuls alone take {100 * out['floor_share_of_target']:.0f}%; the same "
        f"matmuls in torch {out['torch_floor_ms_median']:.1f} ms; beyond its own framework's "
        f"matmuls our step spends {out['beyond_floor_ms']:.1f} ms, torch's "
        f"{out['torch_beyond_torch_floor_ms']:.1f} ms")
  if FLAGS.json_out:
    provenance.write_json(FLAGS.json_out, out, begun)


if __name__ == "__main__":
  absl_run.run(main)
