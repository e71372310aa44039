"""Clear errors before training: an empty split names the data set and the
split; a non-finite lr names the field; total_steps below the restored step
says so; a workdir that cannot be written is one storage error line."""
import os

import grain
import pytest

from tests import train_standin as S
from metalm_jax import storage
from metalm_jax.train import config_checks
from metalm_jax.train import trainer as trainer_lib


class _EmptyValidation:
  """The stand-in data with a validation split of 0 records, or one whose
  reader fails as array_record does with no files."""
  split_stats = staticmethod(S.split_stats)

  def __init__(self, no_files=False):
    self.no_files = no_files

  def make_iterator(self, config, split, **kw):
    if split != "validation":
      return S.make_iterator(config, split, **kw)
    if self.no_files:
      raise ValueError("Paths sequence can not be of 0 length")
    return iter(grain.MapDataset.range(0).batch(kw["batch_size"]).to_iter_dataset())


@pytest.mark.parametrize("no_files", [False, True])
def test_empty_validation_split_is_named_before_training(tmp_path, no_files):
  c = S.tiny_train_config(total_steps=3, eval_every=2)
  c.data.world = "test"
  why = ("ValueError: Paths sequence can not be of 0 length" if no_files else
         "it holds no batch of 8 rows (empty, or smaller than one batch)")
  with pytest.raises(ValueError, match=r"^split 'validation' of data set test cannot be read: "
                     + why.replace("(", r"\(").replace(")", r"\)") + "$"):
    trainer_lib.train(c, str(tmp_path / "w"), data=_EmptyValidation(no_files))
  assert not os.path.exists(tmp_path / "w" / "checkpoints" / "1")  # nothing trained


@pytest.mark.parametrize("lr", [float("inf"), float("nan"), 0.0])
def test_nonfinite_lr_is_refused(lr):
  c = S.tiny_train_config()
  c.optimizer.lr = lr
  with pytest.raises(ValueError, match=rf"^config.optimizer.lr={lr!r}: must be finite and > 0$"):
    config_checks.check_config(c, num_devices=8, process_count=1)


@pytest.mark.integration
def test_total_steps_below_the_restored_step_says_so(tmp_path):
  w = str(tmp_path / "w")
  trainer_lib.train(S.tiny_train_config(total_steps=3, eval_every=0), w, data=S)
  with pytest.raises(ValueError, match=r"^config.total_steps=2 is below step 3, the latest "
                     rf"checkpoint in {w}/checkpoints: this run trained past it"):
    trainer_lib.train(S.tiny_train_config(total_steps=2, eval_every=0), w, data=S)


def test_unwritable_workdir_is_one_storage_error_line(tmp_path):
  """/proc refuses new directories even to root (chmod would not stop root)."""
  w = "/proc/metalm_no_such_dir/w"
  with pytest.raises(storage.StorageError) as e:
    trainer_lib.train(S.tiny_train_config(total_steps=1, eval_every=0), w, data=S)
  msg = str(e.value)
  assert msg.startswith(f"storage error while creating the workdir {w}: ") and "\n" not in msg
