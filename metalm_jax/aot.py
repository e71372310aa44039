"""Ahead-of-time fit check: compile the real train step for a TPU / GPU
topology on this CPU machine and report memory per chip against its HBM.

    bash launch/aot.sh --config=configs/pretrain_vl.py:size=paper --topology=v5e-16
    python -m metalm_jax.aot --config=configs/pretrain_lang.py:size=paper --topology=v4-16 \
        --config.optimizer.grad_accum_steps=8 [--report=/tmp/fit.json]

(`python -m` needs jax[tpu] or jax[cuda12] installed: the `aot` / `aot-gpu`
extras; launch/aot.sh keeps them in their own venvs.) Topology names: see
metalm_jax/aot_targets. The state, shardings and jitted step are the
trainer's own (`Trainer(config, workdir=None, devices=<topology devices>)`);
the batch is the contract's shapes (`data.seq_len` decoder positions), so
any --config.* override (mesh, remat, batch, accumulation) is what compiles.

Memory per chip = arguments + outputs - aliased (the donated state) +
temporaries, from XLA's memory analysis of the compiled step. Model FLOPs per
step come from train/metrics.py's formula (not cost_analysis, which counts a
scanned loop body once). --report's JSON carries the run's provenance
(metalm_jax/provenance.py; its devices are this compile host's).

Exit status: 0 fits; 3 does not fit (RESOURCE_EXHAUSTED at compile, or the
total exceeds the chip's HBM: the GPU compiler does not check); 2 a bad
--topology or config; anything else is a crash (1).
"""
from __future__ import annotations

import json
import sys
import time
from typing import Any, Dict

from metalm_jax import absl_run
from absl import app, flags
from ml_collections import config_flags

config_flags.DEFINE_config_file("config", None, "config file[:arg]", lock_config=True)
flags.DEFINE_string("topology", None, "v5e-16, v4-16, v5p-16, v6e-256, v5e:2x2, h100x8, ...")
flags.DEFINE_string("report", "", "also write the report as JSON here (local or gs://)")
flags.DEFINE_string("hlo", "", "also write the compiled step's HLO text here (which kernels, "
                    "which buffers: e.g. the splash attention custom calls)")
flags.mark_flags_as_required(["config", "topology"])
FLAGS = flags.FLAGS

EXIT_FITS, EXIT_USAGE, EXIT_DOES_NOT_FIT = 0, 2, 3
OOM_MARKER = "RESOURCE_EXHAUSTED"


def stack_options(model_cfg) -> Dict[str, Dict[str, Any]]:
  """Per stack (decoder, encoders.<name>): its remat / scan / attention options."""
  keys = ("remat", "scan", "attention")
  pick = lambda c: {k: c[k] for k in sorted(c) if any(w in k for w in keys)}
  out = {"decoder": pick(model_cfg.decoder)}
  for name, enc in sorted(model_cfg.encoders.items()):
    out[f"encoders.{name}"] = pick(enc)
  return out


def _abstract_batch(trainer, batch_size: int, seq_len: int):
  import jax
  from metalm_jax import batch as batch_lib
  from metalm_jax import sharding as shard_lib
  spec = batch_lib.batch_spec(trainer.config.model, batch_size, seq_len)
  sh = shard_lib.batch_sharding(trainer.mesh)
  as_struct = lambda s: jax.ShapeDtypeStruct(s[0], s[1], sharding=sh)
  return jax.tree.map(as_struct, spec, is_leaf=lambda s: isinstance(s, tuple))


def compile_train_step(config, target, hlo_path: str = "") -> Dict[str, Any]:
  """Lowers and compiles the trainer's jitted step for `target`; the report
  dict. `hlo_path`: also write the compiled HLO text there."""
  from metalm_jax import aot_targets
  from metalm_jax.train import checkpoint as ckpt_lib
  from metalm_jax.train import metrics as metrics_lib
  from metalm_jax.train import trainer as trainer_lib

  devices = aot_targets.devices(target)
  trainer = trainer_lib.Trainer(config, workdir=None, devices=devices)
  seq_len = int(config.data.seq_len)
  state = ckpt_lib.with_shardings(trainer.abstract_state, trainer.shardings)
  batch = _abstract_batch(trainer, config.batch_size, seq_len)
  flops_ex = metrics_lib.flops_per_example(config.model, trainer.abstract_state["params"],
                                           trainer.trainable, seq_len)
  flops = flops_ex * config.batch_size
  report = {
      "topology": target.name, "libtpu_topology": target.topology, "chip": target.chip_name,
      "platform": target.chip.platform, "num_chips": target.num_chips,
      "hbm_bytes": target.hbm_bytes, "mesh": dict(trainer.mesh_sizes),
      "batch_size": int(config.batch_size), "seq_len": seq_len,
      "grad_accum_steps": int(config.optimizer.grad_accum_steps),
      "dtype": str(config.model.dtype), "stacks": stack_options(config.model),
      "compiler_options": dict(target.chip.compiler_options),
      "model_flops_per_step": flops, "model_flops_per_chip": flops / target.num_chips,
      "step_time_at_peak_s": flops / target.num_chips / target.chip.peak_bf16_flops,
  }
  t0 = time.perf_counter()
  with trainer.mesh_context():
    lowered = trainer.jit_train_step().lower(state, batch)
  report["lower_s"] = time.perf_counter() - t0
  t0 = time.perf_counter()
  try:
    compiled = lowered.compile(compiler_options=dict(target.chip.compiler_options) or None)
  except Exception as e:  # noqa: BLE001  only an out-of-memory is a result; the rest re-raises
    if OOM_MARKER not in str(e):
      raise
    report["compile_s"] = time.perf_counter() - t0
    report.update(fits=False, reason=f"{OOM_MARKER} at compile: " + _oom_line(str(e)))
    return report
  report["compile_s"] = time.perf_counter() - t0
  if hlo_path:
    from etils import epath
    epath.Path(hlo_path).write_text(compiled.as_text())
  mem = compiled.memory_analysis()
  parts = {"argument_bytes": mem.argument_size_in_bytes, "output_bytes": mem.output_size_in_bytes,
           "alias_bytes": mem.alias_size_in_bytes, "temp_bytes": mem.temp_size_in_bytes,
           "generated_code_bytes": mem.generated_code_size_in_bytes}
  total = (parts["argument_bytes"] + parts["output_bytes"] - parts["alias_bytes"]
           + parts["temp_bytes"])
  report.update(parts, total_bytes=total, fits=total <= target.hbm_bytes)
  if not report["fits"]:
    report["reason"] = (f"{_gib(total)} per chip > {_gib(target.hbm_bytes)} HBM")
  return report


def _oom_line(msg: str) -> str:
  """The compiler's one-line reason (e.g. 'Ran out of memory ... 15.75G of 15.75G hbm')."""
  lines = [ln.strip() for ln in msg.splitlines() if ln.strip()]
  hit = [ln for ln in lines if OOM_MARKER in ln or "memory" in ln.lower()]
  return (hit or lines or [""])[0][:300]


def _gib(n: float) -> str:
  return f"{n / 2 ** 30:.2f} GiB"


def format_report(r: Dict[str, Any], config_name: str) -> str:
  mesh = " ".join(f"{k}={v}" for k, v in r["mesh"].items())
  stacks = "; ".join(f"{s} {', '.join(f'{k}={v}' for k, v in o.items()) or '-'}"
                     for s, o in r["stacks"].items())
  lines = [
      f"AOT compile of {config_name} for {r['topology']} ({r['libtpu_topology']}, "
      f"{r['num_chips']} x {r['chip']}, {r['platform']})",
      f"  mesh {mesh} | batch {r['batch_size']} x {r['seq_len']} tokens, grad_accum_steps "
      f"{r['grad_accum_steps']} | {r['dtype']} | {stacks}",
      f"  lower {r['lower_s']:.1f} s, compile {r['compile_s']:.1f} s",
  ]
  if "total_bytes" in r:
    lines.append(
        f"  per-chip memory: arguments {_gib(r['argument_bytes'])} + outputs "
        f"{_gib(r['output_bytes'])} - aliased {_gib(r['alias_bytes'])} + temporaries "
        f"{_gib(r['temp_bytes'])} = {_gib(r['total_bytes'])} of {_gib(r['hbm_bytes'])} HBM "
        f"({100 * r['total_bytes'] / r['hbm_bytes']:.0f}%)")
  lines.append("  FITS" if r["fits"] else f"  DOES NOT FIT: {r['reason']}")
  lines.append(
      f"  model FLOPs per step {r['model_flops_per_step']:.3e} ({r['model_flops_per_chip']:.3e} "
      f"per chip: >= {r['step_time_at_peak_s'] * 1e3:.1f} ms/step at the {r['chip']}'s dense "
      f"bf16 peak)")
  return "\n".join(lines)


def parse_flags(argv):
  try:
    out = FLAGS(argv)
    FLAGS.config  # noqa: B018  loads the config file now
    return out
  except Exception as e:  # noqa: BLE001  any parse/load error is a usage error
    print(f"usage error: {e}", file=sys.stderr)
    sys.exit(EXIT_USAGE)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from etils import epath
  from metalm_jax import aot_targets, provenance
  begun = provenance.start()
  try:
    target = aot_targets.resolve(FLAGS.topology)
    report = compile_train_step(FLAGS.config, target, FLAGS.hlo)
  except ValueError as e:  # config / topology checks name the field
    print(f"error: {e}", file=sys.stderr)
    sys.exit(EXIT_USAGE)
  args = sys.argv[1:]
  config_name = next((a.split("=", 1)[1] for a in args if a.startswith("--config=")), None)
  if config_name is None:  # "--config FILE[:arg]"
    config_name = args[args.index("--config") + 1]
  report["config"] = config_name
  report["overrides"] = dict(config_flags.get_override_values(FLAGS["config"]))
  print(format_report(report, config_name), flush=True)
  if FLAGS.report:
    report = provenance.attach(report, begun)  # the compile host's, not the target's
    epath.Path(FLAGS.report).write_text(json.dumps(report, indent=2, sort_keys=True))
  sys.exit(EXIT_FITS if report["fits"] else EXIT_DOES_NOT_FIT)


if __name__ == "__main__":
  absl_run.run(main, flags_parser=parse_flags)
