"""metalm_jax/host_memory.py: with `keep`, a compiled program's large host
temporaries stay in malloc's heap between executions (no page faults after
the first), and the entry points apply it before the backend starts.

The malloc mode is per process and must precede the backend, so the
behaviour is measured in fresh subprocesses."""
import json
import logging
import subprocess
import sys
import textwrap

import pytest

from metalm_jax import host_memory
from tests import main_helpers

# A program whose 64 MiB outer product is a temporary (the matrix-vector
# product after it is a dot, which XLA:CPU does not fuse with its producer),
# run after the mode is applied; prints the mode and page faults per call
# once the heap has settled.
PROBE = textwrap.dedent("""
    import json, resource, sys
    from metalm_jax import host_memory
    mode = host_memory.configure(sys.argv[1])
    import jax, jax.numpy as jnp
    n = 4096
    f = jax.jit(lambda a, b, v: jnp.outer(jnp.sin(a), b) @ v)
    a, b, v = (jnp.linspace(0.0, 1.0, n),) * 3
    temp = f.lower(a, b, v).compile().memory_analysis().temp_size_in_bytes
    for _ in range(12):  # the heap settles in a few calls (fragments of earlier ones)
      f(a, b, v).block_until_ready()
    faults = []
    for _ in range(8):
      f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
      f(a, b, v).block_until_ready()
      faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
    late = host_memory.configure("keep")
    print(json.dumps({"mode": mode, "late": late, "temp": temp, "faults": faults}))
""")


def _probe(mode):
  out = subprocess.run([sys.executable, "-c", PROBE, mode], env=main_helpers.env(),
                       cwd=main_helpers.ROOT, capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stderr[-2000:]
  return json.loads(out.stdout.strip().splitlines()[-1]), out.stderr


def test_keep_stops_the_temporaries_faulting_in_every_call():
  system, _ = _probe("system")
  keep, _ = _probe("keep")
  pages = system["temp"] // 4096
  assert system["temp"] >= 64 * 2**20 and keep["temp"] == system["temp"]
  assert (system["mode"], keep["mode"]) == ("system", "keep")
  # system: the freed 64 MiB goes back to the kernel, so each call faults it in again.
  assert min(system["faults"]) > pages // 2, system
  # keep: the heap already holds it. (Now and then a call still faults it in
  # once, when other allocations have taken its place in the heap: seen under
  # pytest-xdist load, one call in eight. The system's malloc faults every call.)
  quiet = [f for f in keep["faults"] if f < pages // 20]
  assert len(quiet) >= 6, keep
  # Applied once, it stays; asked for too late, it says what holds.
  assert keep["late"] == "keep" and system["late"] == "system"


def test_keep_asked_for_after_the_backend_started_is_refused_naming_the_environment(caplog):
  import jax
  jax.devices()  # this test process's backend is up
  if host_memory._applied["mode"] == "keep":
    pytest.skip("keep was applied to this process before its backend started")
  with caplog.at_level(logging.WARNING, logger=host_memory.__name__):
    assert host_memory.configure("keep") == "system"
  assert host_memory.ENV in caplog.text and "already started" in caplog.text


def test_a_bad_mode_names_the_flag_and_value():
  with pytest.raises(ValueError, match=r"host_malloc='always' is not one of \('auto', 'keep'"):
    host_memory.configure("always")


def test_auto_keeps_only_where_jax_runs_on_cpu_alone(monkeypatch):
  assert host_memory.cpu_only("cpu")
  assert not host_memory.cpu_only("tpu,cpu")
  assert not host_memory.cpu_only("cuda")
  # Unset platforms: decided by what is installed.
  real = host_memory.importlib.util.find_spec
  monkeypatch.setattr(host_memory.importlib.util, "find_spec",
                      lambda name, *a: object() if name == "libtpu" else real(name, *a))
  assert not host_memory.cpu_only("")
  absent = ("libtpu", "jax_plugins")
  monkeypatch.setattr(host_memory.importlib.util, "find_spec",
                      lambda name, *a: None if name in absent else real(name, *a))
  monkeypatch.setattr(host_memory.importlib.metadata, "entry_points", lambda group: [])
  assert host_memory.cpu_only("")
  monkeypatch.setattr(host_memory.importlib.metadata, "entry_points",
                      lambda group: ["jax_cuda12_plugin"] if group == "jax_plugins" else [])
  assert not host_memory.cpu_only("")
  assert host_memory.configure("system") == "system"
