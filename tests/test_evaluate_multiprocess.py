"""Two JAX processes on loopback (4 fake CPU devices each) run the trainer's
evaluators (vqa, caption, classify, icl, loss) on a tiny params checkpoint,
eval-only through the real entry point, and write the same metrics and
predictions as one process with 8 devices (same mesh 2x2x2)."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from metalm_jax import params_io
from metalm_jax.models import metalm
from tests import multiprocess_eval_config
from tests import main_helpers as H

pytestmark = pytest.mark.integration

CONFIG = "tests/multiprocess_eval_config.py"
EVALS = ("vqa", "caption", "classify", "icl", "loss")
# Row computations are the same on both (same mesh, same per-device programs);
# only the per-row loss sums meet another collective order.
RTOL = 1e-6


def _start(workdir, data_dir, params_dir, *flags, devices, log):
  cmd = [sys.executable, "-m", "metalm_jax.main", f"--config={CONFIG}", f"--workdir={workdir}",
         f"--config.data.data_dir={data_dir}", f"--config.init_from={params_dir}",
         f"--config.compilation_cache_dir={H.CACHE_DIR}", *flags]
  return subprocess.Popen(cmd, cwd=H.ROOT, env=H.env(devices), stdout=open(log, "wb"),
                          stderr=subprocess.STDOUT)


def _wait(procs, logs):
  try:
    rcs = [p.wait(300) for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  assert rcs == [0] * len(procs), "\n".join(open(l, errors="replace").read()[-3000:] for l in logs)


def _outputs(workdir):
  d = os.path.join(workdir, "evals")
  results = json.load(open(os.path.join(d, "step_0.json")))["results"]
  preds = {n: [json.loads(l) for l in open(os.path.join(d, f"{n}_step_0.jsonl"))]
           for n in EVALS if n != "loss"}
  return results, preds


def test_evaluators_two_processes_match_one(tmp_path):
  cfg = multiprocess_eval_config.get_config()
  model = metalm.build_model(cfg.model)
  params = metalm.init_variables(model, jax.random.key(7), 1, 8)["params"]
  params_dir = params_io.save_params(str(tmp_path / "params"), params)
  data_dir = str(tmp_path / "data")

  one = str(tmp_path / "one")
  _wait([_start(one, data_dir, params_dir, devices=8, log=one + ".log")], [one + ".log"])
  two = str(tmp_path / "two")
  port = H.free_port()
  logs = [f"{two}.p{i}.log" for i in range(2)]
  _wait([_start(two, data_dir, params_dir, f"--coordinator_address=127.0.0.1:{port}",
                "--num_processes=2", f"--process_id={i}", "--num_cpu_devices=4",
                devices=1, log=logs[i]) for i in range(2)], logs)

  res1, preds1 = _outputs(one)
  res2, preds2 = _outputs(two)
  assert sorted(res1) == sorted(res2) == sorted(EVALS)
  for name in EVALS:
    assert sorted(res1[name]) == sorted(res2[name]), name
    for k in res1[name]:
      np.testing.assert_allclose(res2[name][k], res1[name][k], rtol=RTOL, err_msg=f"{name}/{k}")
  assert preds2 == preds1
  # Every example once, in order (process 1's rows gathered, padding dropped).
  assert [len(preds1[n]) for n in ("vqa", "caption", "classify", "icl")] == [5, 5, 5, 3]
  assert res1["loss"]["batches"] == 2 and res1["loss"]["tokens"] > 0
  assert all(np.isfinite(v) for r in res1.values() for v in r.values())
  # Each process ran its own half of each global batch of 4 (mesh data x fsdp = 4).
  for i, log in enumerate(logs):
    text = open(log, errors="replace").read()
    rows = "0..1" if i == 0 else "2..3"
    assert f"process {i} of 2 runs rows {rows} of every global batch of 4" in text, text[-2000:]
