"""Train-step speed: tokens/s, step time, peak memory and MFU against the
peak of train/metrics.py's mfu_peak: the chip's published dense bf16 peak
(metalm_jax/aot_targets, by jax's device kind), on CPU the matmul peak
measured on the same device in the same run (best of one reading before and
one after the timed steps), or --peak_tflops.

    python benchmarks/train_step.py --config=configs/pretrain_vl.py:size=bench
    python benchmarks/train_step.py --config=configs/pretrain_vl.py:size=tiny --seq_len=64
    python benchmarks/train_step.py --config=configs/pretrain_vl.py:size=bench --compare_torch

With --loss_chunk=N (> 0), a second step computes the loss in chunks of N
positions (`model.decoder.loss_chunk`, models/chunked_loss.py) instead of
from the full float32 logits; both steps start from the same state, run
interleaved in blocks of --block steps, and the figures hold both medians,
both losses and both compiled steps' temporary bytes (XLA's memory
analysis), e.g. at a 32000-token vocabulary:

    python benchmarks/train_step.py --config=configs/pretrain_vl.py:size=bench \
        --config.model.decoder.vocab_size=32000 --loss_chunk=32

With --compare_torch, the same architecture, batch and optimizer in PyTorch/HF
(benchmarks/torch_reference.py) runs in the same process, its steps
interleaved with ours in blocks of --block steps (so load on a shared machine
hits both alike); both medians, their ratio and both MFUs are printed. Torch's
OpenMP threads wait passively by default (--torch_omp_wait): spin-waiting
makes torch 3-5x slower when other processes share the cores.

The batch is synthetic (contract shapes, one image docked per row, all other
positions trained), so only the model and optimizer are timed. MFU counts the
FLOPs of metalm_jax/train/metrics.py (`flops_per_example`). --json_out writes
the figures with their provenance (metalm_jax/provenance.py).
"""
import os
import resource
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from metalm_jax import absl_run  # noqa: E402
from metalm_jax import host_memory  # noqa: E402

config_flags.DEFINE_config_file("config", None, "train config file[:arg]")
flags.DEFINE_integer("batch_size", 16, "global batch")
flags.DEFINE_integer("seq_len", 128, "decoder positions per row")
flags.DEFINE_integer("steps", 20, "timed steps")
flags.DEFINE_integer("warmup", 3, "untimed steps after compilation")
flags.DEFINE_integer("matmul_size", 1024, "square matmul for the measured peak")
flags.DEFINE_string("json_out", "", "also write the figures (and their provenance) here")
flags.DEFINE_float("peak_tflops", 0.0, "MFU peak per device in TFLOP/s; 0 = the published dense "
                   "bf16 peak of the device kind, on CPU (or an unknown kind) the matmul peak "
                   "measured in this run")
flags.DEFINE_integer("loss_chunk", 0, "> 0: also time the step with the loss in chunks of this "
                     "many positions (model.decoder.loss_chunk), against the full-logits step")
flags.DEFINE_bool("compare_torch", False, "also time the PyTorch/HF reference, interleaved")
flags.DEFINE_integer("block", 5, "steps per interleaved block with --compare_torch or --loss_chunk")
flags.DEFINE_integer("torch_threads", 2, "torch intra-op threads")
flags.DEFINE_enum("torch_omp_wait", "passive", ["passive", "active"],
                  "OMP_WAIT_POLICY for torch (unless set in the environment): 'active' "
                  "spin-waits, which collapses torch's speed on an oversubscribed machine")
flags.DEFINE_enum("host_malloc", "auto", list(host_memory.MODES),
                  "malloc mode for the step's host buffers, as metalm_jax.main's flag "
                  "(metalm_jax/host_memory.py); set before the backend starts")
flags.mark_flag_as_required("config")
FLAGS = flags.FLAGS


def host_setup() -> str:
  """--host_malloc applied to this process, as the trainer's entry point does;
  call first, before anything starts the JAX backend. Returns the mode in force."""
  return host_memory.configure(FLAGS.host_malloc)


def synthetic_batch(model_cfg, b, l, seed=0):
  import numpy as np
  from metalm_jax import batch as batch_lib
  rng = np.random.default_rng(seed)
  batch = batch_lib.dummy_batch(model_cfg, b, l)
  v = model_cfg.decoder.vocab_size
  batch["tokens"] = rng.integers(0, v, (b, l)).astype(np.int32)
  batch["targets"] = rng.integers(0, v, (b, l)).astype(np.int32)
  batch["segment_ids"][:] = 1
  batch["positions"][:] = np.arange(l, dtype=np.int32)
  batch["loss_mask"][:] = 1.0
  offsets = batch_lib.dock_offsets(model_cfg.encoders)
  pos = 1
  for name in sorted(model_cfg.encoders):
    enc = model_cfg.encoders[name]
    t = batch_lib.slot_length(enc)
    if pos + t >= l:
      break
    inputs = batch["encoders"][name]
    if enc.type == "vit":
      inputs["pixels"][:] = rng.normal(size=inputs["pixels"].shape)
      inputs["valid"][:, 0] = True
    else:
      inputs["tokens"][:] = rng.integers(0, enc.vocab_size, inputs["tokens"].shape)
      inputs["mask"][:, 0] = True
    batch["dock_mask"][:, pos:pos + t] = True
    batch["dock_index"][:, pos:pos + t] = offsets[name] + np.arange(t)
    batch["loss_mask"][:, pos - 1:pos + t - 1] = 0.0
    pos += t + 1
  batch["loss_mask"][:, -1] = 0.0
  return batch


def peak_memory_bytes(device) -> int:
  stats = device.memory_stats() if hasattr(device, "memory_stats") else None
  if stats and "peak_bytes_in_use" in stats:
    return int(stats["peak_bytes_in_use"])
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # host RSS (CPU)


def build(config, batch_size: int, seq_len: int):
  """Trainer, initial state, synthetic batch and the compiled train step for
  `config` on all local devices (one data-parallel mesh axis)."""
  import types
  from metalm_jax import sharding as shard_lib
  from metalm_jax.train import trainer as trainer_lib
  config.mesh.update(data=-1, fsdp=1, tensor=1)
  # The trainer builds the mesh, sharded state and step; no data is read.
  t = trainer_lib.Trainer(config, tempfile.mkdtemp(prefix="metalm_bench_"), data=None)
  state = t.initial_state()
  np_batch = synthetic_batch(config.model, batch_size, seq_len)
  batch = shard_lib.global_batch(np_batch, t.mesh)
  t0 = time.perf_counter()
  with t.mesh_context():
    compiled = t.jit_train_step().lower(state, batch).compile()
  return types.SimpleNamespace(trainer=t, state=state, np_batch=np_batch, batch=batch,
                               compiled=compiled, compile_s=time.perf_counter() - t0)


def temp_bytes(compiled) -> int:
  """The compiled step's temporary bytes (XLA's memory analysis; -1 if none)."""
  analysis = compiled.memory_analysis()
  return int(analysis.temp_size_in_bytes) if analysis is not None else -1


def _print(out):
  for k, v in out.items():
    print(f"{k:>28}: {v:.4g}" if isinstance(v, float) else f"{k:>28}: {v}")


def _timed_blocks(runners, steps: int, block: int):
  """({name: [wall seconds per step]}, {name: [process CPU seconds per step]},
  {name: [minor page faults per step]}): `block` steps of each runner in turn
  until every runner has `steps`."""
  wall = {name: [] for name in runners}
  cpu = {name: [] for name in runners}
  faults = {name: [] for name in runners}
  while len(wall[next(iter(runners))]) < steps:
    for name, fn in runners.items():
      for _ in range(min(block, steps - len(wall[name]))):
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall[name].append(time.perf_counter() - t0)
        cpu[name].append(time.process_time() - c0)
        faults[name].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
  return wall, cpu, faults


def torch_omp_env() -> None:
  """Re-executes this process with OMP_WAIT_POLICY=--torch_omp_wait unless it
  is set: torch's OpenMP runtime honours it only from the process environment
  (setting it in-process before importing torch was measured to do nothing)."""
  if "OMP_WAIT_POLICY" not in os.environ:
    os.environ["OMP_WAIT_POLICY"] = FLAGS.torch_omp_wait.upper()
    os.execv(sys.executable, [sys.executable] + sys.argv)


def main(argv):
  del argv
  host_malloc = host_setup()
  if FLAGS.compare_torch:
    torch_omp_env()
  import copy

  import jax
  import numpy as np
  from metalm_jax import provenance
  from metalm_jax.train import metrics as metrics_lib

  begun = provenance.start()

  config = FLAGS.config
  config.batch_size = FLAGS.batch_size
  config.total_steps = max(config.total_steps, FLAGS.steps + FLAGS.warmup + 1)
  dev = jax.devices()[0]
  mm_dtype = metrics_lib.matmul_dtype(dev.platform)
  peak_before = metrics_lib.measure_matmul_peak(FLAGS.matmul_size, mm_dtype)
  chunked_config = None
  if FLAGS.loss_chunk > 0:
    chunked_config = copy.deepcopy(config)
    chunked_config.model.decoder.loss_chunk = FLAGS.loss_chunk
    config.model.decoder.loss_chunk = 0
  b = build(config, FLAGS.batch_size, FLAGS.seq_len)
  compiled, batch, np_batch, t = b.compiled, b.batch, b.np_batch, b.trainer
  compile_s = b.compile_s
  box = {"state": b.state}

  def ours():
    box["state"], m = compiled(box["state"], batch)
    box["metrics"] = m
    jax.block_until_ready(m)

  runners = {"jax": ours}
  if chunked_config is not None:
    bc = build(chunked_config, FLAGS.batch_size, FLAGS.seq_len)
    box["chunked_state"] = bc.state

    def chunked():
      box["chunked_state"], m = bc.compiled(box["chunked_state"], bc.batch)
      box["chunked_metrics"] = m
      jax.block_until_ready(m)
    runners["jax_chunked"] = chunked
  flops_ex = metrics_lib.flops_per_example(config.model, t.abstract_state["params"], t.trainable,
                                           FLAGS.seq_len)
  params = int(sum(np.prod(x.shape) for x in jax.tree.leaves(t.abstract_state["params"])))
  ref = None
  if FLAGS.compare_torch:
    from benchmarks import torch_reference
    ref = torch_reference.TorchBench(config, np_batch, threads=FLAGS.torch_threads,
                                     seed=config.seed)
    torch_counted = ref.counted_flops() / FLAGS.batch_size  # one (untimed) step
    torch_peak = torch_reference.measure_matmul_peak(FLAGS.matmul_size)
    runners["torch"] = ref.step
  for _ in range(FLAGS.warmup):
    for fn in runners.values():
      fn()
  load = os.getloadavg()[0]
  interleave = ref is not None or chunked_config is not None
  times, cpu, faults = _timed_blocks(runners, FLAGS.steps,
                                     FLAGS.block if interleave else FLAGS.steps)
  step_s = float(np.median(times["jax"]))
  # Best of two matmul readings around the timed steps (shared machines drift).
  measured = max(peak_before, metrics_lib.measure_matmul_peak(FLAGS.matmul_size, mm_dtype))
  mfu_peak = metrics_lib.mfu_peak(FLAGS.peak_tflops * 1e12, measure=lambda dtype: measured)
  peak = mfu_peak.total
  m = box["metrics"]
  out = {
      "device": f"{dev.platform}:{dev.device_kind} x{jax.device_count()}",
      "model_dtype": config.model.dtype,
      "batch": f"{FLAGS.batch_size} x {FLAGS.seq_len}",
      "params": params,
      "compile_s": round(compile_s, 2),
      "step_time_ms_median": round(1e3 * step_s, 2),
      "step_time_ms_min": round(1e3 * min(times["jax"]), 2),
      "step_cpu_ms_median": round(1e3 * float(np.median(cpu["jax"])), 2),
      "host_malloc": host_malloc,
      "page_faults_per_step_median": float(np.median(faults["jax"])),
      "load_average_1min": round(load, 2),
      "tokens_per_sec": round(FLAGS.batch_size * FLAGS.seq_len / step_s, 1),
      "model_tflops_per_step": flops_ex * FLAGS.batch_size / 1e12,
      "achieved_tflops": flops_ex * FLAGS.batch_size / step_s / 1e12,
      "matmul_peak_tflops": measured / 1e12,
      "mfu_peak_tflops": peak / 1e12,
      "mfu_peak_source": mfu_peak.source,
      "mfu": flops_ex * FLAGS.batch_size / step_s / peak,
      "mfu_best_step": flops_ex * FLAGS.batch_size / min(times["jax"]) / peak,
      "peak_memory_mb": round(peak_memory_bytes(dev) / 2 ** 20, 1),
      "temp_mb": round(temp_bytes(compiled) / 2 ** 20, 1),
      "loss": float(m["loss"]),
  }
  if chunked_config is not None:
    chunked_s = float(np.median(times["jax_chunked"]))
    out.update({
        "loss_chunk": FLAGS.loss_chunk,
        "vocab_size": config.model.decoder.vocab_size,
        "chunked_compile_s": round(bc.compile_s, 2),
        "chunked_step_time_ms_median": round(1e3 * chunked_s, 2),
        "chunked_step_time_ms_min": round(1e3 * min(times["jax_chunked"]), 2),
        "chunked_temp_mb": round(temp_bytes(bc.compiled) / 2 ** 20, 1),
        "chunked_loss": float(box["chunked_metrics"]["loss"]),
        "chunked_over_plain_step_time": chunked_s / step_s,
    })
  if ref is not None:
    torch_s = float(np.median(times["torch"]))
    torch_peak = max(torch_peak, torch_reference.measure_matmul_peak(FLAGS.matmul_size))
    # One hardware peak for both MFUs: the better of the two libraries' matmuls.
    both_peak = max(peak, torch_peak)
    out.update({
        "torch_params": torch_reference.count_params(ref.model),
        "torch_formula_tflops_per_step": torch_reference.formula_flops_per_example(
            ref.model, config.model, FLAGS.seq_len) * FLAGS.batch_size / 1e12,
        "torch_counted_tflops_per_step": torch_counted * FLAGS.batch_size / 1e12,
        "torch_step_time_ms_median": round(1e3 * torch_s, 2),
        "torch_step_time_ms_min": round(1e3 * min(times["torch"]), 2),
        "torch_step_cpu_ms_median": round(1e3 * float(np.median(cpu["torch"])), 2),
        "torch_page_faults_per_step_median": float(np.median(faults["torch"])),
        "torch_matmul_peak_tflops": torch_peak / 1e12,
        "torch_loss": ref.step(),
        "speedup_vs_torch": torch_s / step_s,
        "cpu_time_ratio_torch_over_ours": float(np.median(cpu["torch"]) / np.median(cpu["jax"])),
        "mfu_vs_best_peak": flops_ex * FLAGS.batch_size / step_s / both_peak,
        "torch_mfu_vs_best_peak": flops_ex * FLAGS.batch_size / torch_s / both_peak,
    })
  _print(out)
  print(f"MFU {100 * out['mfu']:.1f}% of {peak * 1e-9:.1f} GFLOP/s ({mfu_peak.describe()})")
  if ref is not None:
    print(f"ours {out['step_time_ms_median']:.1f} ms vs torch "
          f"{out['torch_step_time_ms_median']:.1f} ms per step (medians of {FLAGS.steps}, "
          f"interleaved in blocks of {FLAGS.block}): "
          f"ours is {out['speedup_vs_torch']:.2f}x torch's speed; MFU ours "
          f"{100 * out['mfu_vs_best_peak']:.1f}% / torch {100 * out['torch_mfu_vs_best_peak']:.1f}%"
          f" of the better matmul peak ({max(peak, torch_peak) * 1e-9:.1f} GFLOP/s); process CPU "
          f"time per step torch/ours {out['cpu_time_ratio_torch_over_ours']:.2f}; load average "
          f"{load:.1f} on {os.cpu_count()} cores; OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}")
  if chunked_config is not None:
    print(f"loss in chunks of {FLAGS.loss_chunk} positions: temporaries {out['temp_mb']} MiB -> "
          f"{out['chunked_temp_mb']} MiB, step {out['step_time_ms_median']:.1f} -> "
          f"{out['chunked_step_time_ms_median']:.1f} ms (medians of {FLAGS.steps}, interleaved "
          f"in blocks of {FLAGS.block}), loss after the same steps {out['loss']:.6f} vs "
          f"{out['chunked_loss']:.6f}; peak memory (both steps, one process) "
          f"{out['peak_memory_mb']} MiB")
  if FLAGS.json_out:
    provenance.write_json(FLAGS.json_out, out, begun)


if __name__ == "__main__":
  absl_run.run(main)
