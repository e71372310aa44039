"""Renamed config fields (metalm_jax/config_names.py): old command lines,
sweeps and workdirs keep working under the new names; a config file that
still sets an old field is refused naming the new one."""
import json
import subprocess
import sys

import pytest

from metalm_jax import config_names, storage
from metalm_jax.sweep import grid as grid_lib
from metalm_jax.sweep import state as state_lib
from metalm_jax import run_files
from metalm_jax.train import run_config
from metalm_jax.train import trainer as trainer_lib
from tests import main_helpers as H
from tests import train_standin as S

OLD_NEW = [("log_every", "log.every_steps"), ("eval_every", "eval_loss.every_steps"),
           ("eval_batches", "eval_loss.num_batches"),
           ("eval_batch_size", "eval_loss.batch_size")]


@pytest.mark.parametrize("old,new", OLD_NEW)
def test_every_renamed_field_exists_under_its_new_name_only(old, new):
  c = S.tiny_train_config()
  section, leaf = new.split(".")
  assert leaf in c[section] and old not in c
  assert config_names.new_field(old) == new
  assert config_names.migrate_flag(f"--config.{old}=7") == f"--config.{new}=7"


def test_other_fields_and_flags_are_untouched():
  for field in ("log", "eval_loss.every_steps", "evals.v.every_steps", "log_everything",
                "data.eval_every"):
    assert config_names.new_field(field) == field
  assert config_names.migrate_flag("--workdir=/tmp/eval_every") == "--workdir=/tmp/eval_every"
  assert config_names.migrate_flag("--config.optimizer.lr=1") == "--config.optimizer.lr=1"


def test_stored_config_with_old_fields_resumes_without_drift(tmp_path):
  """A workdir written before the rename (flat log_every / eval_* fields)
  compares equal to the same run configured with the new names."""
  c = S.tiny_train_config(**{"eval_loss.every_steps": 0})
  now = run_files.run_config_json(c, None)
  old = json.loads(json.dumps(now))
  old.pop("log"), old.pop("eval_loss")
  old.update(log_every=1, eval_every=0, eval_batches=2, eval_batch_size=0)
  storage.write_json(str(tmp_path / run_files.RUN_CONFIG_FILE), old)
  assert run_config.load(str(tmp_path))["eval_loss"] == {"every_steps": 0, "num_batches": 2,
                                                         "batch_size": 0}
  assert run_config.check_resume(str(tmp_path), now) == []
  assert run_files.load_run_config(str(tmp_path))["log"] == {"every_steps": 1}
  now["eval_loss"]["num_batches"] = 5  # a resumable change shows under the new name
  assert run_config.check_resume(str(tmp_path), now) == [
      "eval_loss.num_batches: 2 (checkpoint) -> 5 (now)"]


def test_a_config_file_setting_an_old_field_is_refused_naming_the_new():
  c = S.tiny_train_config()
  c.eval_every = 5  # a config file written before the rename: would be ignored
  with pytest.raises(ValueError, match=r"renamed: eval_every \(now eval_loss.every_steps\)"):
    trainer_lib.check_config(c, num_devices=8, process_count=1)


def test_sweep_old_set_and_saved_spec_use_the_new_names(tmp_path):
  assert grid_lib.parse_fixed(["eval_every=200", "--config.log_every=3"]) == [
      ("eval_loss.every_steps", "200"), ("log.every_steps", "3")]
  saved = {"config": "c.py", "grid": [{"field": "eval_batches", "values": ["1", "2"]}],
           "fixed": ["--config.eval_every=200"], "runs": []}
  storage.write_json(str(tmp_path / state_lib.SWEEP_FILE), saved)
  got = state_lib.load(str(tmp_path))
  assert got["fixed"] == ["--config.eval_loss.every_steps=200"]
  assert got["grid"] == [{"field": "eval_loss.num_batches", "values": ["1", "2"]}]


@pytest.mark.integration
def test_main_reads_an_old_flag_under_the_new_name():
  """The entry point's flag parsing with `--config.log_every=7
  --config.eval_every=0`: the old names reach the new fields, with a note."""
  code = ("import sys; from metalm_jax import main; "
          "main.parse_flags(sys.argv); c = main.FLAGS.config; "
          "print('GOT', c.log.every_steps, c.eval_loss.every_steps)")
  p = subprocess.run([sys.executable, "-c", code, "--config=configs/pretrain_vl.py:size=tiny",
                      "--config.log_every=7", "--config.eval_every=0", "--workdir=/tmp/x"],
                     cwd=H.ROOT, env=H.env(), capture_output=True, text=True, timeout=120)
  assert p.returncode == 0, p.stderr[-2000:]
  assert "GOT 7 0" in p.stdout
  assert "--config.log_every is now --config.log.every_steps" in p.stderr


def test_a_run_written_before_the_decoder_families_resumes_without_drift(tmp_path):
  """Fields added since (decoder family fields, the ViT readout) are absent
  from an older run's config.json: at the values that build the old model
  they are no drift; another value is."""
  from configs import pretrain_vl
  now = run_files.run_config_json(pretrain_vl.get_config("size=tiny"), None)
  old = json.loads(json.dumps(now))
  for f in ("norm_type", "mlp", "num_kv_heads", "qkv_bias", "rope_theta", "rope_scaling",
            "embed_scale"):
    del old["model"]["decoder"][f]
  del old["model"]["encoders"]["vision"]["readout"]
  storage.write_json(str(tmp_path / run_files.RUN_CONFIG_FILE), old)
  assert run_config.check_resume(str(tmp_path), now) == []
  now["model"]["decoder"]["norm_type"] = "rms"
  with pytest.raises(run_config.ConfigDriftError, match=r"model.decoder.norm_type: <absent>"):
    run_config.check_resume(str(tmp_path), now)
