"""Helpers for the entry-point tests: run `python -m metalm_jax.main` on the
small `test` world with a small model, and read what it logged."""
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from metalm_jax.train import metrics as metrics_lib
from tests.train_standin import CACHE_DIR

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SMALL = [
    "--config=configs/pretrain_vl.py:size=tiny",
    "--config.data.world=test", "--config.data.seq_len=32",
    "--config.batch_size=8", "--config.log.every_steps=1", "--config.eval_loss.every_steps=0",
    "--config.metrics.peak_flops=1e11", "--config.optimizer.warmup_steps=2",
    f"--config.compilation_cache_dir={CACHE_DIR}",
    "--config.model.decoder.num_layers=1", "--config.model.decoder.emb_dim=32",
    "--config.model.decoder.mlp_dim=64", "--config.model.decoder.num_heads=2",
    "--config.model.encoders.vision.num_layers=1", "--config.model.encoders.vision.emb_dim=32",
    "--config.model.encoders.vision.mlp_dim=64", "--config.model.encoders.vision.num_heads=2",
    "--config.model.encoders.vision.image_size=32",
    "--config.model.encoders.text.num_layers=1", "--config.model.encoders.text.emb_dim=32",
    "--config.model.encoders.text.mlp_dim=64", "--config.model.encoders.text.num_heads=2",
    "--config.sharding.min_fsdp_size=1024",
]


# conftest.py's compile flags (no expensive LLVM passes: ~5x faster compiles)
# reach the subprocesses too; the device count is each run's own.
COMPILE_FLAGS = ["--xla_backend_optimization_level=0", "--xla_llvm_disable_expensive_passes=true"]


def env(devices: int = 1):
  e = dict(os.environ)
  flags = ["--xla_cpu_collective_call_warn_stuck_timeout_seconds=20",
           "--xla_cpu_collective_call_terminate_timeout_seconds=60", *COMPILE_FLAGS]
  if devices > 1:
    flags.append(f"--xla_force_host_platform_device_count={devices}")
  e.update(XLA_FLAGS=" ".join(flags), JAX_PLATFORMS="cpu", PYTHONPATH=ROOT,
           TF_CPP_MIN_LOG_LEVEL="3")
  return e


def start(workdir, data_dir, *flags, devices=1, log=None, environ=None):
  cmd = [sys.executable, "-m", "metalm_jax.main", f"--workdir={workdir}", *SMALL,
         f"--config.data.data_dir={data_dir}", *flags]
  with open(log or os.path.join(str(workdir) + ".log"), "ab") as out:  # the child keeps its copy
    return subprocess.Popen(cmd, cwd=ROOT, env=environ or env(devices), stdout=out,
                            stderr=subprocess.STDOUT)


def run(workdir, data_dir, *flags, devices=1, timeout=300, log=None):
  p = start(workdir, data_dir, *flags, devices=devices, log=log)
  rc = p.wait(timeout)
  assert rc == 0, f"main exited {rc}; log: {tail(log[:-4] if log else workdir)}"
  return p


def run_module(log_stem, module, *args, timeout=300):
  """`python -m module args...` with the test env; log in LOG_STEM.log."""
  with open(f"{log_stem}.log", "ab") as out:
    p = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env(),
                       stdout=out, stderr=subprocess.STDOUT, timeout=timeout)
  assert p.returncode == 0, f"{module} exited {p.returncode}; log: {tail(log_stem)}"


def tail(workdir, n=3000):
  """The end of a run's console log: WORKDIR.log (a local path or log stem)."""
  path = str(workdir) + ".log"
  if not os.path.exists(path):
    return ""
  with open(path, errors="replace") as f:
    return f.read()[-n:]


def losses(workdir):
  """step -> train loss of a local or gs:// workdir (every record, chunks included)."""
  return {r["step"]: r["loss"] for r in metrics_lib.read_metrics(str(workdir)) if "loss" in r}


def wait_for_step(proc, workdir, step, timeout=300):
  """Polls metrics.jsonl until `step` is logged; returns the last logged step."""
  t0 = time.time()
  while time.time() - t0 < timeout:
    try:
      got = max(losses(workdir), default=0)
    except (ValueError, FileNotFoundError):  # a file replaced while read
      got = 0
    if got >= step:
      return got
    if proc.poll() is not None:
      pytest.fail(f"run ended (rc={proc.returncode}) before step {step}: {tail(workdir)}")
    time.sleep(0.05)
  pytest.fail(f"step {step} not reached in {timeout}s: {tail(workdir)}")


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def kill(proc, sig):
  os.kill(proc.pid, sig)
  return proc.wait(120)


SIGTERM, SIGKILL = signal.SIGTERM, signal.SIGKILL
