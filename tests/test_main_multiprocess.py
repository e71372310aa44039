"""Two JAX processes on loopback (4 fake CPU devices each) running the real
entry point log the same losses as one process with 8 devices."""
import os

import numpy as np
import pytest

from tests import main_helpers as H

pytestmark = pytest.mark.integration

# Same mesh and data; only the collectives differ (gloo across processes vs
# in-process), which may reorder float32 reductions.
ATOL = 1e-5
FLAGS = ["--config.total_steps=3", "--config.checkpoint.every_steps=100",
         "--config.mesh.data=2", "--config.mesh.fsdp=2", "--config.mesh.tensor=2",
         "--config.data_shards=2"]


# ~1 min on 2 cores with the test compile flags of conftest.py; the only test of
# the multi-process path, so it stays in the default run.
def test_two_processes_match_one(tmp_path):
  data_dir = str(tmp_path / "data")
  one = tmp_path / "one_process"
  H.run(one, data_dir, *FLAGS, devices=8)
  two = tmp_path / "two_processes"
  port = H.free_port()
  procs = [H.start(two, data_dir, *FLAGS, f"--coordinator_address=127.0.0.1:{port}",
                   "--num_processes=2", f"--process_id={i}", "--num_cpu_devices=4",
                   log=f"{two}.log" if i == 0 else f"{two}.p1.log")
           for i in range(2)]
  try:
    rcs = [p.wait(300) for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  assert rcs == [0, 0], H.tail(two)
  a, b = H.losses(one), H.losses(two)
  assert sorted(a) == sorted(b) == [1, 2, 3]
  np.testing.assert_allclose([b[s] for s in (1, 2, 3)], [a[s] for s in (1, 2, 3)], atol=ATOL)
  # Both processes wrote their data-iterator position into the final checkpoint.
  files = sorted(os.listdir(two / "checkpoints" / "3" / "data_iter"))
  assert [f for f in files if f.endswith(".json")] == ["process_0-of-2.json",
                                                      "process_1-of-2.json"]
