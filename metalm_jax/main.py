"""Entry point: train (or evaluate, with total_steps=0) from a config file.

    python -m metalm_jax.main --config=configs/pretrain_vl.py:size=tiny --workdir=/tmp/vl \
        [--config.optimizer.lr=1e-3] [--config.total_steps=100]

Multi-host: every process runs the same command; `jax.distributed` starts from
--coordinator_address/--num_processes/--process_id when given, else from the
environment (automatic on Cloud TPU VMs and SLURM). A run always resumes from
the latest complete checkpoint in --workdir (local or gs://), which one run
holds at a time (--force takes the lock of a run that is gone; see README
"Reliability").
Exit status: 0 finished; 42 (train/preemption.PREEMPTED_EXIT_CODE) preempted
by SIGTERM or a preemption notice after saving the current step: start the
same command again to resume (the launchers do); 1 an error (a storage error
is one line naming the workdir path that failed).
"""
from __future__ import annotations

import json
import logging
import os
import re
import sys

from metalm_jax import absl_run
from absl import app, flags
from ml_collections import config_flags

from metalm_jax import config_names
from metalm_jax import host_memory

config_flags.DEFINE_config_file("config", None, "config file[:arg]", lock_config=True)
flags.DEFINE_string("workdir", None, "checkpoints, metrics.jsonl, TensorBoard events")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-process)")
flags.DEFINE_integer("num_processes", None, "number of processes (multi-process)")
flags.DEFINE_integer("process_id", None, "this process's index (multi-process)")
flags.DEFINE_integer("num_cpu_devices", 0, "CPU only: devices per process (0 = default)")
flags.DEFINE_bool("distributed", None, "call jax.distributed.initialize() without flags; "
                  "default: on Cloud TPU VMs with several workers")
flags.DEFINE_bool("force", False, "take over the workdir lock even if another run holds it")
flags.DEFINE_enum("host_malloc", "auto", list(host_memory.MODES),
                  "keep: malloc keeps the step's freed host buffers (XLA:CPU temporaries) "
                  "instead of unmapping them every step; auto: keep on CPU-only hosts "
                  "(metalm_jax/host_memory.py)")
flags.mark_flags_as_required(["config", "workdir"])
FLAGS = flags.FLAGS


def _config_error(argv, e: Exception):
  """Exits with one line naming the bad --config override (when there is one)."""
  msg = re.sub(r"\\[nt]|[\\\n]", " ", str(e)).strip("'\" ")
  if "Traceback" in msg:  # an exception inside the config file: keep its last line
    msg = msg.rsplit("Error: ", 1)[-1].strip()
  words = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", msg))
  named = [a for a in argv[1:] if a.startswith("--config") and
           words & set(re.split(r"[.=:,]", a.split("=", 1)[0]))]
  where = f" in {' '.join(named)}" if named else ""
  sys.exit(f"config error{where}: {msg}")


def parse_flags(argv):
  """absl flag parsing (renamed --config fields read under their new names,
  config_names.py); a bad --config or override exits naming it."""
  argv = config_names.migrate_argv(argv)
  if argv[1:] != sys.argv[1:]:
    sys.argv[1:] = argv[1:]  # the config flag reads sys.argv too
  try:
    out = FLAGS(argv)
    FLAGS.config  # noqa: B018  loads the config file now
    return out
  except Exception as e:  # noqa: BLE001  any parse/load error is a usage error
    _config_error(argv, e)


def _multiworker_tpu() -> bool:
  hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
  return len([h for h in hosts.split(",") if h]) > 1


def init_distributed() -> None:
  import jax
  if FLAGS.num_cpu_devices:
    jax.config.update("jax_num_cpu_devices", FLAGS.num_cpu_devices)
  explicit = [FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id]
  if any(v is not None for v in explicit):
    if any(v is None for v in explicit):
      raise app.UsageError("--coordinator_address, --num_processes and --process_id go together")
    jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  elif FLAGS.distributed or (FLAGS.distributed is None and _multiworker_tpu()):
    jax.distributed.initialize()


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from metalm_jax import storage
  from metalm_jax.train import preemption
  host_memory.configure(FLAGS.host_malloc)  # before the backend starts its threads
  # SIGTERM from here on means "preempted": exit 42 at the next safe point.
  try:
    with preemption.StopSignal():
      init_distributed()
      import jax
      from metalm_jax.train import trainer
      config = FLAGS.config
      trainer.check_config(config)  # before any compile; names the field
      logging.info("process %d/%d, %d devices; workdir %s", jax.process_index(),
                   jax.process_count(), jax.device_count(), FLAGS.workdir)
      results = trainer.train(config, FLAGS.workdir, force_lock=FLAGS.force,
                              command=list(sys.argv))
  except preemption.Preempted as e:
    logging.warning("%s", e)
    print(str(e), flush=True)
    sys.exit(preemption.PREEMPTED_EXIT_CODE)
  except storage.StorageError as e:
    logging.exception("storage error")
    storage.quiet_pending_writes(str(e))
    sys.exit(str(e))
  if jax.process_index() == 0:
    print("final: " + json.dumps({k: v for k, v in results.items()
                                  if isinstance(v, (int, float, str))}, sort_keys=True),
          flush=True)


if __name__ == "__main__":
  absl_run.run(main, flags_parser=parse_flags)
