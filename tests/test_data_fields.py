"""Sources read only the record fields they name (Source.fields,
records.FieldRecords): the rows they make are those of a full
deserialisation, and a field read but not named fails naming it."""
import pickle

import numpy as np
import pytest

from metalm_jax.data import pipeline, prepare
from metalm_jax.data import records as records_lib
from metalm_jax.data import sources as sources_lib
from tests import world_config

RECORDS = 30  # per source: the first records of the test world's train split


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
  return world_config.test_config("vl", "tiny", tmp_path_factory.mktemp("tfds"))


def _embedded():
  return sorted(n for n in sources_lib.SOURCES if sources_lib.SOURCES.get(n).embedded)


def _same(a, b) -> bool:
  if isinstance(a, dict):
    return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
  if isinstance(a, (list, tuple)):
    return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
  if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and bool(np.array_equal(a, b))
  return type(a) is type(b) and a == b


def test_every_embedded_source_names_its_fields():
  names = _embedded()
  assert len(names) >= 20 and "world_caption" in names
  assert [n for n in names if not sources_lib.SOURCES.get(n).fields] == []


def test_selected_fields_extract_as_a_full_record_does(cfg):
  full = prepare.world_records(cfg.data, "train")
  for name in _embedded():
    src = sources_lib.SOURCES.get(name)
    part = pipeline.data_source(cfg.data, name, "train")
    assert isinstance(part.records, records_lib.FieldRecords) and len(part) == len(full)
    for i in range(min(RECORDS, len(full))):
      record = part[i]
      assert set(record) == set(src.fields), name
      got = src.extract(record, np.random.default_rng(i))
      want = src.extract(full[i], np.random.default_rng(i))
      assert _same(got, want), (name, i)


def test_a_field_not_named_fails_naming_it(cfg):
  raw = pipeline.data_source(cfg.data, "world_caption", "train").records.raw
  only_image = records_lib.FieldRecords(raw, ("image",), "my_source")
  with pytest.raises(KeyError, match=r"'my_source' read record field 'captions'.*Source.fields"):
    sources_lib.SOURCES.get("world_caption").extract(only_image[0], np.random.default_rng(0))
  # .get keeps dict's meaning: generic code asks records for optional keys.
  assert only_image[0].get("captions", "absent") == "absent"
  assert not records_lib.is_unreadable(only_image[0])
  with pytest.raises(ValueError, match=r"'my_source'.*\['sound'\], not fields of"):
    records_lib.FieldRecords(raw, ("image", "sound"), "my_source")


def test_field_records_pickle_for_grain_workers(cfg):
  part = pipeline.data_source(cfg.data, "world_vqa", "train")
  again = pickle.loads(pickle.dumps(part))
  assert _same(dict(again[3]), dict(part[3]))
  assert part.where(3) and part.where(3) == again.where(3)  # the shard is still named
