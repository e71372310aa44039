"""A validation split with no batch is refused before training (never an
evaluation over no tokens); check_config rejects negative eval / checkpoint /
evaluator counts, naming the field."""

import pytest

from tests import train_standin as S
from metalm_jax.train import trainer as trainer_lib


class TinyValidation:
  """The stand-in data, but a validation split smaller than one batch: the
  batched iterator (drop_remainder) yields nothing."""
  split_stats = staticmethod(S.split_stats)

  @staticmethod
  def make_iterator(config, split, **kw):
    return S.make_iterator(config, split, **kw) if split == "train" else iter(())


def test_validation_split_without_a_batch_is_refused_before_training(tmp_path):
  """A validation split that yields no batch would make every evaluation a
  NaN over no tokens: the run stops before its first step, naming the split."""
  c = S.tiny_train_config(total_steps=1, eval_every=1)
  with pytest.raises(ValueError, match=r"split 'validation' of data set .* cannot be read: it "
                                       r"holds no batch of 8 rows"):
    trainer_lib.train(c, str(tmp_path / "w"), data=TinyValidation)
  assert not list((tmp_path / "w").glob("checkpoints/[0-9]*"))  # no step was saved


@pytest.mark.parametrize("field,value,match", [
    ("eval_loss.num_batches", -1,
     r"config.eval_loss.num_batches=-1: must be >= 1 when eval_loss.every_steps > 0"),
    ("eval_loss.num_batches", 0,
     r"config.eval_loss.num_batches=0: must be >= 1 when eval_loss.every_steps > 0"),
    ("log.every_steps", 0, r"config.log.every_steps=0: must be > 0"),
    ("checkpoint.every_steps", -5, r"config.checkpoint.every_steps=-5: must be >= 0"),
    ("max_nonfinite_steps", 0, r"config.max_nonfinite_steps=0: must be >= 1"),
    ("evals", {"v": dict(type="vqa", every_steps=5, num_examples=-1)},
     r"config.evals.v.num_examples=-1: must be >= 0"),
    ("evals", {"v": dict(type="caption", every_steps=5, batch_size=0)},
     r"config.evals.v.batch_size=0: must be >= 1"),
    ("evals", {"i": dict(type="icl", every_steps=5, shots=(0, -1))},
     r"config.evals.i.shots=\(0, -1\): must be >= 0"),
])
def test_counts_are_validated(field, value, match):
  c = S.tiny_train_config(**{field: value})
  with pytest.raises(ValueError, match=match):
    trainer_lib.check_config(c, num_devices=8, process_count=1)


def test_zero_eval_batches_is_fine_with_eval_off():
  c = S.tiny_train_config(**{"eval_loss.every_steps": 0, "eval_loss.num_batches": 0})
  c.checkpoint.every_steps = 0
  trainer_lib.check_config(c, num_devices=8, process_count=1)
