"""A corrupt latest checkpoint: one line naming the step and the file; with
checkpoint.restore_fallback (default) the run resumes from the previous step,
saying so, and the bad step is replaced when the run saves it again."""
import glob
import logging
import os
import shutil

import pytest

import tests.test_train_standin as S
from metalm_jax.train import checkpoint as ckpt_lib
from metalm_jax.train import trainer as trainer_lib


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  w = str(tmp_path_factory.mktemp("ckpt") / "w")
  trainer_lib.train(S.tiny_train_config(total_steps=6, eval_every=0), w, data=S)
  return w


def _copy(trained, tmp_path):
  w = str(tmp_path / "w")
  shutil.copytree(trained, w)
  return w, os.path.join(w, "checkpoints", "6")


def test_truncated_file_falls_back_to_the_previous_step(trained, tmp_path, caplog):
  w, step6 = _copy(trained, tmp_path)
  (data_file,) = glob.glob(os.path.join(step6, "state", "d", "*"))
  with open(data_file, "r+b") as f:
    f.truncate(os.path.getsize(data_file) // 2)
  with caplog.at_level(logging.WARNING):
    res = trainer_lib.train(S.tiny_train_config(total_steps=7, eval_every=0), w, data=S)
  line = [r.getMessage() for r in caplog.records if "falling back" in r.getMessage()]
  assert len(line) == 1 and "\n" not in line[0]
  assert line[0].startswith(f"checkpoint step 6 cannot be restored from {data_file}: ")
  assert line[0].endswith("; falling back to step 3 (checkpoint.restore_fallback)")
  assert res["step"] == 7
  # Steps 4..7 were trained again; step 6 was saved anew and now restores.
  t = trainer_lib.Trainer(S.tiny_train_config(), str(tmp_path / "other"), data=S)
  ck = ckpt_lib.Checkpointer(w, S.tiny_train_config().checkpoint)
  target = ckpt_lib.with_shardings(t.abstract_state, t.shardings)
  _, step = ck.restore(target, t._make_iter("train", 8, True, None), step=6)
  ck.close()
  assert step == 6


def test_missing_metadata_is_named_and_fallback_can_be_off(trained, tmp_path):
  w, step6 = _copy(trained, tmp_path)
  os.remove(os.path.join(step6, "state", "_METADATA"))
  c = S.tiny_train_config(total_steps=7, eval_every=0)
  c.checkpoint.restore_fallback = False
  with pytest.raises(ckpt_lib.CheckpointRestoreError) as e:
    trainer_lib.train(c, w, data=S)
  assert str(e.value) == (f"checkpoint step 6 cannot be restored: "
                          f"{os.path.join(step6, 'state', '_METADATA')} is missing")
