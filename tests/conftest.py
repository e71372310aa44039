"""Test setup: 8 fake CPU devices (before jax is imported), parsed absl flags,
and short collective time-outs so a hang fails fast."""
import os
import sys

os.environ["XLA_FLAGS"] = " ".join([
    os.environ.get("XLA_FLAGS", ""),
    "--xla_force_host_platform_device_count=8",
    # A deadlocked CPU collective fails within a minute instead of hanging CI.
    "--xla_cpu_collective_call_warn_stuck_timeout_seconds=20",
    "--xla_cpu_collective_call_terminate_timeout_seconds=60",
    # Tests are dominated by XLA:CPU compile time, not run time: compiling
    # without the expensive LLVM passes is ~5x faster and numerically the same
    # computation (tests/main_helpers.env passes them to subprocesses).
    "--xla_backend_optimization_level=0",
    "--xla_llvm_disable_expensive_passes=true",
]).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)  # so `configs` imports from the repo

# Every GCS client in this process talks to the loopback emulator only: the
# variables must be set before anything imports gcsfs, fsspec or tensorstore.
from tests import gcs_emulator as gcs_lib  # noqa: E402

os.environ.update(gcs_lib.env(gcs_lib.PORT))


import itertools  # noqa: E402

import pytest  # noqa: E402
from absl import flags  # noqa: E402

flags.FLAGS.mark_as_parsed()


@pytest.fixture(scope="session")
def gcs_emulator(tmp_path_factory):
  """The emulator this process's GCS clients point at (tests/gcs_emulator.py)."""
  emu = gcs_lib.Emulator(tmp_path_factory.mktemp("gcs"), gcs_lib.PORT).start()
  yield emu
  emu.stop()


_buckets = itertools.count()


@pytest.fixture
def gcs_bucket(gcs_emulator):
  """A fresh bucket on the emulator: 'gs://NAME'."""
  return gcs_emulator.create_bucket(f"bucket{os.getpid()}-{next(_buckets)}")
