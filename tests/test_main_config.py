"""Config errors stop before any compile and name the field: flag parsing of
the real entry point (unknown field, wrong type, unknown size, impossible
mesh) and the trainer's checks (mesh, batch divisibility)."""
import subprocess
import sys

import pytest

from metalm_jax.train import trainer as trainer_lib
from tests import main_helpers as H


def _main_fails(*argv):
  """Runs the real entry point with argv; it must fail before jax starts."""
  p = subprocess.run([sys.executable, "-m", "metalm_jax.main", "--workdir=/nonexistent/x",
                      *argv], cwd=H.ROOT, env=H.env(), capture_output=True, text=True,
                     timeout=120)
  assert p.returncode != 0
  return p.stdout + p.stderr


@pytest.mark.integration
def test_flag_errors_name_the_field():
  vl = "--config=configs/pretrain_vl.py:size=tiny"
  assert "config error in --config.optimizer.lrr=3e-4" in _main_fails(
      vl, "--config.optimizer.lrr=3e-4")
  out = _main_fails(vl, "--config.batch_size=abc")
  assert "config.batch_size" in out and "abc" in out
  assert "config error: config arg size='huge' is unknown" in _main_fails(
      "--config=configs/pretrain_vl.py:size=huge")
  out = _main_fails(vl, "--config.mesh.data=3", "--config.total_steps=1")
  assert "needs 3 devices, but 1 are available" in out


def test_trainer_checks_name_the_field():
  from configs import pretrain_vl
  c = pretrain_vl.get_config("size=tiny")
  c.mesh.data = 3
  with pytest.raises(ValueError, match=r"mesh \{'data': 3, 'fsdp': 1, 'tensor': 1\} needs 3"):
    trainer_lib.check_config(c, num_devices=8, process_count=1)
  c.mesh.data, c.batch_size = 8, 12
  with pytest.raises(ValueError, match=r"config.batch_size=12: not divisible by the data shards"):
    trainer_lib.check_config(c, num_devices=8, process_count=1)
  c.batch_size = 16
  c.model.decoder.num_heads = 3
  with pytest.raises(ValueError, match=r"model.decoder.num_heads=3"):
    trainer_lib.check_config(c, num_devices=8, process_count=1)


def test_paper_configs_are_consistent():
  from configs import pretrain_lang, pretrain_vl
  vl = pretrain_vl.get_config("size=paper")
  assert (vl.batch_size, vl.total_steps, vl.optimizer.lr, vl.optimizer.warmup_steps,
          vl.optimizer.decay, vl.optimizer.b2, vl.optimizer.weight_decay) == (
              256, 350_000, 1e-4, 2500, "linear", 0.98, 0.01)
  assert vl.model.decoder.num_layers == 24 and vl.model.decoder.emb_dim == 1024
  lang = pretrain_lang.get_config("size=paper")
  assert (lang.batch_size, lang.total_steps, lang.optimizer.lr, lang.data.seq_len) == (
      1024, 300_000, 6e-4, 2048)
  assert dict(lang.optimizer.encoder_top_layers) == {"text": 2}
  # Both check out against a 256-device pod (fsdp inferred).
  trainer_lib.check_config(vl, num_devices=256, process_count=64)
  trainer_lib.check_config(lang, num_devices=256, process_count=64)


def test_runlocal_shrinks_any_size():
  from configs import pretrain_lang, pretrain_vl
  c = pretrain_vl.get_config("size=bench,runlocal")
  assert (c.total_steps, c.batch_size, c.eval_loss.every_steps,
          c.model.decoder.num_layers) == (100, 8, 50, 4)
  c = pretrain_lang.get_config("size=paper,runlocal,steps=7")
  assert c.total_steps == 7 and dict(c.mesh) == {"data": -1, "fsdp": 1, "tensor": 1}
  with pytest.raises(ValueError, match=r"config arg 'runlocl' is unknown"):
    pretrain_vl.get_config("runlocl")


@pytest.mark.integration
def test_gcs_data_dir_stops_at_start_up_naming_the_ways():
  """array_record cannot read gs:// (metalm_jax/data/data_dir.py): one line
  naming the field and the supported ways, before anything compiles."""
  out = _main_fails("--config=configs/pretrain_vl.py:size=tiny",
                    "--config.data.data_dir=gs://bucket/tfds")
  line = [l for l in out.splitlines() if "config.data.data_dir=" in l]
  assert line, out[-2000:]
  assert "'gs://bucket/tfds'" in line[-1] and "gcsfuse" in line[-1]
  assert "--data_bucket" in line[-1] and "local disk" in line[-1]
