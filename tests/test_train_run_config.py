"""Config drift on resume: model/data changes stop the restart before anything
compiles (one line per field) and leave config.json as it was; resumable
fields are logged and written after the restore succeeds."""
import json
import logging

import pytest

from tests import train_standin as S
from metalm_jax.train import checkpoint as ckpt_lib
from metalm_jax.train import run_config
from metalm_jax.train import trainer as trainer_lib


def test_diff_and_resumable_fields():
  saved = {"model": {"decoder": {"activation": "gelu", "num_layers": 1}}, "seed": 0,
           "total_steps": 10, "optimizer": {"lr": 1e-3, "b2": 0.98},
           "data": {"seq_len": 32, "num_workers": 0, "read_threads": 2}}
  now = {"model": {"decoder": {"activation": "relu", "num_layers": 1}}, "seed": 0,
         "total_steps": 20, "optimizer": {"lr": 5e-4, "b2": 0.95},
         "data": {"seq_len": 32, "num_workers": 2, "read_threads": 4}, "max_nonfinite_steps": 3}
  got = {k: (a, b) for k, a, b in run_config.diff(saved, now)}
  assert sorted(got) == ["data.num_workers", "data.read_threads", "max_nonfinite_steps",
                         "model.decoder.activation", "optimizer.b2", "optimizer.lr",
                         "total_steps"]
  fatal = sorted(k for k in got if not run_config.is_resumable(k))
  # The iterator state depends on num_workers; b2 changes the optimizer's maths.
  assert fatal == ["data.num_workers", "model.decoder.activation", "optimizer.b2"]
  assert not run_config.is_resumable("optimizer.groups.frozen_text.regex")
  assert run_config.is_resumable("checkpoint.every_steps")
  assert run_config.is_resumable("evals.vqa.num_examples")


@pytest.mark.integration
def test_restart_refuses_model_drift_and_logs_resumable_changes(tmp_path, monkeypatch, caplog):
  w = str(tmp_path / "w")
  c = S.tiny_train_config(total_steps=3, eval_every=0)
  trainer_lib.train(c, w, data=S)
  before = run_config.load(w)
  assert before["model"]["decoder"]["activation"] == "gelu"

  changed = S.tiny_train_config(total_steps=3, eval_every=0)
  changed.model.decoder.activation = "relu"
  changed.model.decoder.num_layers = 2
  changed.seed = 1

  def not_now(*a, **k):
    raise AssertionError("the drift check must come before this")
  with monkeypatch.context() as m:
    m.setattr(trainer_lib.Trainer, "initial_state", not_now)
    m.setattr(trainer_lib.Trainer, "_make_iter", not_now)
    m.setattr(ckpt_lib.Checkpointer, "restore", not_now)
    with pytest.raises(run_config.ConfigDriftError) as e:
      trainer_lib.train(changed, w, data=S)
  lines = str(e.value).splitlines()[1:]
  assert [x.strip() for x in lines] == [
      "model.decoder.activation: gelu (checkpoint) != relu (now)",
      "model.decoder.num_layers: 1 (checkpoint) != 2 (now)",
      "seed: 0 (checkpoint) != 1 (now)"]
  assert run_config.load(w) == before  # the old run can still be exported

  more = S.tiny_train_config(total_steps=5, eval_every=0)
  more.checkpoint.every_steps = 5
  with caplog.at_level(logging.WARNING):
    res = trainer_lib.train(more, w, data=S)
  assert res["step"] == 5
  assert "config changed on resume: total_steps: 3 (checkpoint) -> 5 (now)" in caplog.text
  assert ("config changed on resume: checkpoint.every_steps: 3 (checkpoint) -> 5 (now)"
          in caplog.text)
  after = json.loads((tmp_path / "w" / "config.json").read_text())
  assert after["total_steps"] == 5 and after["checkpoint"]["every_steps"] == 5


@pytest.mark.parametrize("removed", ["model.encoders.text", "optimizer.groups.frozen_text"])
def test_removing_a_field_is_drift_too(tmp_path, removed):
  """Fields that the checkpoint's config has and the new one lacks (an
  encoder, an optimizer group) count like changed ones."""
  saved = {"model": {"encoders": {"vision": {"num_layers": 1}, "text": {"num_layers": 2}}},
           "optimizer": {"lr": 1e-3, "groups": {"frozen_text": {"regex": "^enc", "frozen": True}}},
           "total_steps": 10}
  (tmp_path / "config.json").write_text(json.dumps(saved))
  now = json.loads(json.dumps(saved))
  parent, key = removed.rsplit(".", 1)
  node = now
  for k in parent.split("."):
    node = node[k]
  del node[key]
  with pytest.raises(run_config.ConfigDriftError) as e:
    run_config.check_resume(str(tmp_path), now)
  lines = [x.strip() for x in str(e.value).splitlines()[1:]]
  gone = [x for x in lines if x.endswith("(checkpoint) != <absent> (now)")]
  assert gone and all(x.startswith(removed + ".") for x in gone), lines
