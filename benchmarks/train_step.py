"""Train-step speed: tokens/s, step time, peak memory and MFU against the
matmul peak measured on the same device in the same run.

    python benchmarks/train_step.py --config=configs/pretrain_vl.py:size=bench
    python benchmarks/train_step.py --config=configs/pretrain_vl.py:size=tiny --seq_len=64

The batch is synthetic (contract shapes, one image docked per row, all other
positions trained), so only the model and optimizer are timed. MFU counts the
FLOPs of metalm_jax/train/metrics.py (`flops_per_example`).
"""
import json
import os
import resource
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

config_flags.DEFINE_config_file("config", None, "train config file[:arg]")
flags.DEFINE_integer("batch_size", 16, "global batch")
flags.DEFINE_integer("seq_len", 128, "decoder positions per row")
flags.DEFINE_integer("steps", 20, "timed steps")
flags.DEFINE_integer("warmup", 3, "untimed steps after compilation")
flags.DEFINE_integer("matmul_size", 1024, "square matmul for the peak")
flags.DEFINE_string("json_out", "", "also write the figures here")
flags.DEFINE_float("peak_tflops", 0.0, "published dense peak per device (e.g. 989 for H100 SXM "
                   "bf16); 0 = the matmul peak measured in this run")
flags.mark_flag_as_required("config")
FLAGS = flags.FLAGS


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


def main(argv):
  del argv
  import jax
  import jax.numpy as jnp
  import numpy as np
  from metalm_jax.train import metrics as metrics_lib
  from metalm_jax.train import sharding as shard_lib
  from metalm_jax.train import trainer as trainer_lib

  config = FLAGS.config
  config.batch_size = FLAGS.batch_size
  config.total_steps = max(config.total_steps, FLAGS.steps + FLAGS.warmup + 1)
  config.mesh.update(data=-1, fsdp=1, tensor=1)
  # The trainer builds the mesh, sharded state and step; no data is read.
  t = trainer_lib.Trainer(config, tempfile.mkdtemp(prefix="metalm_bench_"), data=None)
  dev = jax.devices()[0]
  mm_dtype = jnp.dtype(config.model.dtype)
  peak_before = metrics_lib.measure_matmul_peak(FLAGS.matmul_size, mm_dtype)
  state = t.initial_state()
  train_step = t.jit_train_step()
  batch = shard_lib.global_batch(synthetic_batch(config.model, FLAGS.batch_size, FLAGS.seq_len),
                                 t.mesh)
  t0 = time.perf_counter()
  with t.mesh_context():
    compiled = train_step.lower(state, batch).compile()
  compile_s = time.perf_counter() - t0
  for _ in range(FLAGS.warmup):
    state, m = compiled(state, batch)
    jax.block_until_ready(m)
  times = []
  for _ in range(FLAGS.steps):
    t0 = time.perf_counter()
    state, m = compiled(state, batch)
    jax.block_until_ready(m)
    times.append(time.perf_counter() - t0)
  step_s = float(np.median(times))
  # Best of two peak readings around the timed steps (shared machines drift).
  peak_single = max(peak_before, metrics_lib.measure_matmul_peak(FLAGS.matmul_size, mm_dtype))
  peak = metrics_lib.peak_flops(peak_single)
  if FLAGS.peak_tflops > 0:  # MFU against the chip's published peak, not a measured matmul
    peak = FLAGS.peak_tflops * 1e12 * jax.device_count()
  flops_ex = metrics_lib.flops_per_example(config.model, t.abstract_state["params"], t.trainable,
                                           FLAGS.seq_len)
  out = {
      "device": f"{dev.platform}:{dev.device_kind} x{jax.device_count()}",
      "model_dtype": config.model.dtype,
      "batch": f"{FLAGS.batch_size} x {FLAGS.seq_len}",
      "params": int(sum(np.prod(x.shape) for x in jax.tree.leaves(t.abstract_state["params"]))),
      "compile_s": round(compile_s, 2),
      "step_time_ms_median": round(1e3 * step_s, 2),
      "step_time_ms_min": round(1e3 * min(times), 2),
      "tokens_per_sec": round(FLAGS.batch_size * FLAGS.seq_len / step_s, 1),
      "model_tflops_per_step": flops_ex * FLAGS.batch_size / 1e12,
      "achieved_tflops": flops_ex * FLAGS.batch_size / step_s / 1e12,
      "matmul_peak_tflops": peak / 1e12,
      "mfu": flops_ex * FLAGS.batch_size / step_s / peak,
      "mfu_best_step": flops_ex * FLAGS.batch_size / min(times) / peak,
      "peak_memory_mb": round(peak_memory_bytes(dev) / 2 ** 20, 1),
      "loss": float(m["loss"]),
  }
  for k, v in out.items():
    print(f"{k:>24}: {v:.4g}" if isinstance(v, float) else f"{k:>24}: {v}")
  what = (f"the published peak ({FLAGS.peak_tflops:g} TFLOP/s per device)" if FLAGS.peak_tflops > 0
          else f"the measured {FLAGS.matmul_size}^2 matmul peak")
  print(f"MFU {100 * out['mfu']:.1f}% of {what} ({out['matmul_peak_tflops'] * 1e3:.1f} GFLOP/s)")
  if FLAGS.json_out:
    with open(FLAGS.json_out, "w") as f:
      json.dump(out, f, indent=2)


if __name__ == "__main__":
  app.run(main)
