"""Data shards: one process reading 2 shards equals two processes reading one
each; the iterator state round-trips through the checkpoint handler."""

import numpy as np
import pytest

from tests import train_standin as S
from metalm_jax.train import checkpoint as ckpt_lib
from metalm_jax.train import digests as digests_lib
from metalm_jax.train import input as input_lib


class _Proc:
  """Fakes jax.process_index / process_count for make_process_iterator."""

  def __init__(self, monkeypatch, index, count):
    monkeypatch.setattr(input_lib.jax, "process_index", lambda: index)
    monkeypatch.setattr(input_lib.jax, "process_count", lambda: count)


def _iter(cfg, **kw):
  return input_lib.make_process_iterator(S, cfg, "train", global_batch_size=8, seed=0,
                                         shuffle=True, num_epochs=None, **kw)


def test_two_shards_in_one_process_equal_two_processes(monkeypatch):
  cfg = S.tiny_train_config(data_shards=2)
  _Proc(monkeypatch, 0, 1)
  one = _iter(cfg)
  assert isinstance(one, input_lib.ConcatIterator)
  parts = []
  for i in range(2):
    _Proc(monkeypatch, i, 2)
    parts.append(_iter(cfg))
  for _ in range(3):
    b = next(one)
    p0, p1 = next(parts[0]), next(parts[1])
    np.testing.assert_array_equal(b["tokens"], np.concatenate([p0["tokens"], p1["tokens"]]))
    np.testing.assert_array_equal(b["encoders"]["vision"]["pixels"],
                                  np.concatenate([p0["encoders"]["vision"]["pixels"],
                                                  p1["encoders"]["vision"]["pixels"]]))
    assert b["tokens"].shape[0] == 8
    assert int(b["stats"]["too_long"]) == int(np.sum(p0["stats"]["too_long"])) + int(
        np.sum(p1["stats"]["too_long"]))


def test_iterator_state_round_trip_and_errors(monkeypatch):
  _Proc(monkeypatch, 0, 1)
  cfg = S.tiny_train_config(data_shards=2)
  it = _iter(cfg)
  next(it)
  snap = ckpt_lib._IterSnapshot(it)  # what a save writes
  want = [next(it)["tokens"] for _ in range(2)]
  fresh = _iter(cfg)
  ckpt_lib._IterRestoreTarget(fresh, "test iterator").set_state(snap.get_state())
  got = [next(fresh)["tokens"] for _ in range(2)]
  np.testing.assert_array_equal(np.stack(got), np.stack(want))
  single = _iter(S.tiny_train_config())
  with pytest.raises(ValueError, match=r"has 2 shards, this run reads 1|shards"):
    input_lib.ConcatIterator([single]).set_state(
        digests_lib.unwrap_iterator_state(snap.get_state())[0])
  with pytest.raises(ValueError, match=r"config.data_shards=3: does not divide batch_size=8"):
    input_lib.num_shards(S.tiny_train_config(data_shards=3), 1)
  with pytest.raises(ValueError, match=r"config.data_shards=3: not a multiple of the process"):
    input_lib.num_shards(S.tiny_train_config(data_shards=3), 2)
