"""A corrupt latest checkpoint: one line naming the step and the file (or the
array whose digest no longer matches); with checkpoint.restore_fallback
(default) the run resumes from the previous step, saying so, its metrics log
rewound to that step, and the bad step is replaced when the run saves it
again. Checkpoints without digests (older ones) restore with a note."""
import glob
import json
import logging
import os
import re
import shutil

import jax
import numpy as np
import pytest

from tests import train_standin as S
from metalm_jax.train import checkpoint as ckpt_lib
from metalm_jax.train import metrics as metrics_lib
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


@pytest.mark.integration
@pytest.mark.parametrize("where", ["d", "ocdbt.process_0/d"])
def test_truncated_file_falls_back_to_the_previous_step(trained, tmp_path, caplog, where):
  w, step6 = _copy(trained, tmp_path)
  data_file = max(glob.glob(os.path.join(step6, "state", where, "*")), key=os.path.getsize)
  with open(data_file, "r+b") as f:
    f.truncate(os.path.getsize(data_file) // 2)
  with caplog.at_level(logging.WARNING):
    res = trainer_lib.train(S.tiny_train_config(total_steps=7, eval_every=0), w, data=S)
  line = [r.getMessage() for r in caplog.records if "falling back" in r.getMessage()]
  assert len(line) == 1 and "\n" not in line[0]
  assert line[0].startswith(f"checkpoint step 6 cannot be restored from {data_file}: ")
  assert line[0].endswith("; falling back to step 3 (checkpoint.restore_fallback)")
  assert res["step"] == 7
  # The metrics log was rewound to the step restored (3), not the latest (6):
  # every step once.
  assert [r["step"] for r in metrics_lib.read_metrics(w) if "loss" in r] == list(range(1, 8))
  # Steps 4..7 were trained again; step 6 was saved anew and now restores.
  t = trainer_lib.Trainer(S.tiny_train_config(), str(tmp_path / "other"), data=S)
  ck = ckpt_lib.Checkpointer(w, S.tiny_train_config().checkpoint)
  target = ckpt_lib.with_shardings(t.abstract_state, t.shardings)
  _, step = ck.restore(target, t._make_iter("train", 8, True, None), step=6)
  ck.close()
  assert step == 6


@pytest.mark.integration
def test_missing_metadata_is_named_and_fallback_can_be_off(trained, tmp_path):
  w, step6 = _copy(trained, tmp_path)
  os.remove(os.path.join(step6, "state", "_METADATA"))
  c = S.tiny_train_config(total_steps=7, eval_every=0)
  c.checkpoint.restore_fallback = False
  with pytest.raises(ckpt_lib.CheckpointRestoreError) as e:
    trainer_lib.train(c, w, data=S)
  assert str(e.value) == (f"checkpoint step 6 cannot be restored: "
                          f"{os.path.join(step6, 'state', '_METADATA')} is missing")


# ---- digests: data changed after the save is never restored silently --------

@pytest.fixture(scope="module")
def restorer(tmp_path_factory):
  """(restore(workdir, step=None) -> (state, step, iterator), the trainer)."""
  t = trainer_lib.Trainer(S.tiny_train_config(), str(tmp_path_factory.mktemp("r") / "w"), data=S)
  target = ckpt_lib.with_shardings(t.abstract_state, t.shardings)

  def restore(w, step=None):
    ck = ckpt_lib.Checkpointer(w, S.tiny_train_config().checkpoint)
    it = t._make_iter("train", 8, True, None)
    try:
      state, got = ck.restore(target, it, step=step)
    finally:
      ck.close()
    return state, got, it
  return restore


def _fallback_lines(caplog):
  return [r.getMessage() for r in caplog.records if "falling back" in r.getMessage()]


def _flip_bit(path, offset, bit=3):
  with open(path, "r+b") as f:
    f.seek(offset)
    b = f.read(1)[0]
    f.seek(offset)
    f.write(bytes([b ^ (1 << bit)]))


@pytest.mark.integration
def test_bit_flip_in_a_stored_value_is_named_and_falls_back(trained, tmp_path, restorer, caplog):
  """One bit of one stored value changed in a way the storage decodes without
  an error (rewritten through tensorstore): only the digest can see it."""
  import tensorstore as ts
  w, step6 = _copy(trained, tmp_path)
  name = "params.decoder.embedder.embedding"
  arr = ts.open({"driver": "zarr", "kvstore": {
      "driver": "ocdbt", "base": f"file://{step6}/state/", "path": name + "/"}}).result()
  bits = arr[0:1, 0:1].read().result().view(np.uint32) ^ np.uint32(1 << 3)
  arr[0:1, 0:1].write(bits.view(np.float32)).result()
  with caplog.at_level(logging.WARNING):
    _, step, _ = restorer(w)
  assert step == 3
  (line,) = _fallback_lines(caplog)
  # One line: the step, the item and the array whose stored bits changed.
  assert re.fullmatch(
      rf"checkpoint step 6 cannot be restored from {re.escape(os.path.join(step6, 'state'))}: "
      r"DigestMismatch: array params/decoder/embedder/embedding: digest [0-9a-f]{16} != "
      r"[0-9a-f]{16} saved with the step; falling back to step 3 \(checkpoint.restore_fallback\)",
      line), line
  assert not [r for r in caplog.records if "without checking" in r.getMessage()]


@pytest.mark.integration
def test_bit_flip_in_a_data_file_is_never_restored_silently(trained, tmp_path, restorer, caplog):
  """A raw bit flip in the largest data file: a decode error or a digest
  mismatch (which one depends on where the bit falls), never a silent restore."""
  w, step6 = _copy(trained, tmp_path)
  files = glob.glob(os.path.join(step6, "state", "ocdbt.process_0", "d", "*"))
  biggest = max(files, key=os.path.getsize)
  _flip_bit(biggest, os.path.getsize(biggest) // 2)
  with caplog.at_level(logging.WARNING):
    state, step, _ = restorer(w)
  assert step == 3
  (line,) = _fallback_lines(caplog)
  assert line.startswith(f"checkpoint step 6 cannot be restored from {step6}/state") and (
      "DigestMismatch: array " in line or "Error reading" in line), line
  ref, _, _ = restorer(trained, step=3)
  jax.tree.map(np.testing.assert_array_equal, state, ref)


@pytest.mark.integration
def test_edited_iterator_position_is_named_and_falls_back(trained, tmp_path, restorer, caplog):
  w, step6 = _copy(trained, tmp_path)
  path = os.path.join(step6, "data_iter", "process_0-of-1.json")
  text = open(path).read()
  assert '"next_index": 6' in text
  with open(path, "w") as f:
    f.write(text.replace('"next_index": 6', '"next_index": 7'))
  with caplog.at_level(logging.WARNING):
    _, step, it = restorer(w)
  assert step == 3 and it.get_state() == {"next_index": 3}
  (line,) = _fallback_lines(caplog)
  assert line.startswith(f"checkpoint step 6 cannot be restored from {path}: DigestMismatch: "
                         "data-iterator state: digest "), line


@pytest.mark.integration
def test_checkpoint_without_digests_restores_with_a_note(trained, tmp_path, restorer, caplog):
  """A checkpoint written before digests existed: no `digests` item, the
  iterator file holds the bare state."""
  w, step6 = _copy(trained, tmp_path)
  shutil.rmtree(os.path.join(step6, "digests"))
  path = os.path.join(step6, "data_iter", "process_0-of-1.json")
  with open(path, "w") as f:
    json.dump({"next_index": 6}, f)
  with caplog.at_level(logging.WARNING):
    state, step, it = restorer(w)
  assert step == 6 and it.get_state() == {"next_index": 6}
  assert [r.getMessage() for r in caplog.records if "without checking" in r.getMessage()] == [
      "checkpoint step 6 has no digests of its arrays and data-iterator state (saved before "
      "checkpoints carried them): restored without checking them"]
  ref, _, _ = restorer(trained, step=6)  # the same values as the intact copy
  jax.tree.map(np.testing.assert_array_equal, state, ref)


def test_digests_do_not_depend_on_the_mesh_and_see_one_changed_element():
  import jax.numpy as jnp
  from jax.sharding import NamedSharding, PartitionSpec as P
  from metalm_jax.train import digests
  x = jnp.arange(64 * 8, dtype=jnp.float32).reshape(64, 8) / 7
  tree = {"a": x, "b": x.astype(jnp.bfloat16), "c": jnp.int32(5)}
  mesh = jax.make_mesh((8,), ("d",), axis_types=(jax.sharding.AxisType.Auto,))
  sharded = {**tree, "a": jax.device_put(x, NamedSharding(mesh, P("d", None)))}
  ref = digests.array_digests(tree)
  assert digests.array_digests(sharded) == ref and len(set(ref.values())) == 3
  # One element, one bit (the lowest of the mantissa) changes the digest.
  bits = jax.lax.bitcast_convert_type(x, jnp.uint32).at[17, 3].add(1)
  changed = {**tree, "a": jax.lax.bitcast_convert_type(bits, jnp.float32)}
  with pytest.raises(digests.DigestMismatch, match=r"^array a: digest [0-9a-f]{16} != "):
    digests.check_arrays(ref, changed)
  # Swapping two elements changes it too (the index is mixed in).
  swapped = {**tree, "a": x.at[0, 0].set(x[0, 1]).at[0, 1].set(x[0, 0])}
  assert digests.array_digests(swapped)["a"] != ref["a"]
