"""Export reads what the real trainer writes: a 2-step run on a 2x2x2 mesh
(sharded params, Orbax `state` + `data_iter`), then `python -m
metalm_jax.export` gives back exactly the trainer's params."""
import json
import os

import jax
import numpy as np
import pytest

from tests import train_standin as S
from metalm_jax import params_io
from metalm_jax.convert import export
from metalm_jax.train import checkpoint as ckpt_lib
from metalm_jax.train import trainer as trainer_lib

pytestmark = pytest.mark.integration


def test_export_of_a_trainer_workdir(tmp_path):
  workdir, out = str(tmp_path / "run"), str(tmp_path / "export")
  cfg = S.tiny_train_config(total_steps=2, eval_every=0)
  cfg.mesh.update(data=2, fsdp=2, tensor=2)
  cfg.sharding.min_fsdp_size = 1024
  trainer_lib.train(cfg, workdir, data=S)
  with open(os.path.join(workdir, "config.json")) as f:  # written by the trainer
    assert json.load(f)["model"] == json.loads(cfg.model.to_json())
  assert export.main([f"--workdir={workdir}", f"--out={out}", "--seq_len=16"]) == 0
  got, meta = params_io.load_params(out)
  probe = S.tiny_train_config(total_steps=2, eval_every=0)
  probe.mesh.update(data=1, fsdp=1, tensor=1)
  t = trainer_lib.Trainer(probe, str(tmp_path / "probe"), data=S, devices=jax.devices()[:1])
  target = ckpt_lib.with_shardings(t.abstract_state["params"], t.shardings["params"])
  want = jax.tree.map(np.asarray, ckpt_lib.restore_params(workdir, target))
  a, b = params_io.flatten(want), params_io.flatten(got)
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  assert meta["model"]["decoder"] == cfg.model.decoder.to_dict()
