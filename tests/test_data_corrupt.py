"""A corrupt array_record shard: the error names the data set, split, shard
file and record; with data.skip_corrupt_records the bad records are skipped
and counted."""
import glob
import os
import shutil

import pytest

from metalm_jax.data import pipeline, records

from tests import world_config as testing


@pytest.fixture(scope="module")
def corrupt_dir(tmp_path_factory):
  good = str(tmp_path_factory.mktemp("good"))
  cfg = testing.test_config("vl", "tiny", good, mixture={"world_caption": 1.0})
  next(pipeline.make_iterator(cfg, "train", batch_size=2))  # world + tokenizer
  bad = str(tmp_path_factory.mktemp("bad") / "tfds")
  shutil.copytree(good, bad)
  (shard,) = glob.glob(os.path.join(bad, "metalm_world", "test", "*", "*-train.array_record-*"))
  data = bytearray(open(shard, "rb").read())
  at = len(data) // 3
  data[at:at + 2000] = bytes(b ^ 0x5A for b in data[at:at + 2000])  # flip bits in one block
  with open(shard, "wb") as f:
    f.write(data)
  return bad, shard


def test_corrupt_shard_error_names_dataset_split_shard_and_record(corrupt_dir):
  data_dir, shard = corrupt_dir
  cfg = testing.test_config("vl", "tiny", data_dir, mixture={"world_caption": 1.0})
  it = pipeline.make_iterator(cfg, "train", batch_size=4, shuffle=False, num_epochs=1)
  with pytest.raises(records.CorruptRecordError) as e:
    for _ in it:
      pass
  msg = str(e.value)
  assert msg.startswith("data set 'metalm_world/test' split 'train': record ")
  assert f"(shard {shard}, record " in msg
  assert "Corrupted Riegeli/records file" in msg and "skip_corrupt_records=True" in msg


def test_skip_corrupt_records_skips_and_counts(corrupt_dir):
  data_dir, _ = corrupt_dir
  cfg = testing.test_config("vl", "tiny", data_dir, mixture={"world_caption": 1.0},
                            skip_corrupt_records=True)
  src = pipeline.data_source(cfg.data, "world_caption", "train", skip_corrupt=True)
  bad = [i for i in range(len(src)) if records.is_unreadable(src[i])]
  assert 0 < len(bad) < len(src)
  it = pipeline.make_iterator(cfg, "train", batch_size=4, shuffle=False, num_epochs=1)
  rows = skipped = 0
  for b in it:
    batch, stats = pipeline.split_stats(b)
    rows += len(batch["tokens"])
    skipped += stats["skipped_unreadable_record"]
  # Every unreadable record is counted: its count rides on the next row
  # emitted (packing.DropFailed), and a readable record follows the bad ones.
  assert max(bad) < len(src) - 1
  assert skipped == len(bad)
  assert rows == (len(src) - len(bad)) // 4 * 4
