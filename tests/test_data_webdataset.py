"""WebDataset shards in img2dataset's layout (data/webdataset.py) build into
the same format as JSONL manifests (data/builders/jsonl.py): a few tar shards
written here, with bad samples counted and named by shard and sample number."""
import io
import json
import tarfile

import ml_collections as mlc
import pytest
from PIL import Image

from metalm_jax.data import build, manifest, pipeline, user_sets, webdataset

COLORS = [(220, 30, 30), (30, 200, 30), (30, 30, 220), (200, 200, 30)]


def _png(i):
  out = io.BytesIO()
  Image.new("RGB", (20, 20), COLORS[i % 4]).save(out, format="PNG")
  return out.getvalue()


def _shard(path, samples):
  """A tar of `samples`: (key, {ext: bytes}) in order, img2dataset style."""
  with tarfile.open(path, "w") as tar:
    for key, parts in samples:
      for ext, data in parts.items():
        info = tarfile.TarInfo(f"{key}.{ext}")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))


def _meta(key, **kw):
  return json.dumps({"key": key, "url": f"http://x/{key}.png", "status": "success",
                     "caption": None, **kw}).encode()


def write_shards(root):
  root.mkdir(parents=True)
  good = lambda s, i: (f"{s:05d}/{s:05d}{i:04d}",  # noqa: E731
                       {"png": _png(i), "txt": f"color {i}.".encode(),
                        "json": _meta(f"{s:05d}{i:04d}")})
  _shard(root / "00000.tar", [good(0, 0), good(0, 1),
                              ("00000/00000002", {"png": b"junk", "txt": b"bad image.",
                                                  "json": _meta("00000002")})])
  _shard(root / "00001.tar", [good(1, 0),
                              ("00001/00010001", {"png": _png(1), "json": b"{oops"}),
                              ("00001/00010002", {"png": _png(2), "json": _meta("00010002")}),
                              ("00001/00010003", {"png": _png(3), "wav": b"RIFF",
                                                  "txt": b"two media."})])
  _shard(root / "00002.tar", [("00002/00020000", {"png": _png(0), "txt": b"again.",
                                                  "json": _meta("000000000")}), good(2, 1)])
  _shard(root / "val.tar", [good(9, i) for i in range(3)])
  return f"train={root}/{{00000..00002}}.tar;validation={root}/val.tar"


def test_brace_patterns_expand_in_order():
  assert webdataset.expand("s/{00008..00011}.tar") == [
      "s/00008.tar", "s/00009.tar", "s/00010.tar", "s/00011.tar"]
  assert webdataset.expand("gs://b/{a,b}/{1..2}.tar") == [
      "gs://b/a/1.tar", "gs://b/a/2.tar", "gs://b/b/1.tar", "gs://b/b/2.tar"]
  assert webdataset.expand("plain.tar") == ["plain.tar"]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  root = tmp_path_factory.mktemp("web")
  spec = write_shards(root / "shards")
  cfg = mlc.ConfigDict(dict(data_dir=str(root / "tfds"), world="test", manual_dirs={}))
  name, rest = build.named(f"web:{spec}", "webdataset")
  build.build(cfg.data_dir, "", [], [], webdataset=[(name, rest)], max_bad_fraction=0.6)
  return root, cfg


def test_shards_build_with_bad_samples_counted_and_named(built):
  _, cfg = built
  report = user_sets.report(cfg, "web")
  assert report["lines"] == 12 and report["bad_lines"] == 5
  assert {k: v for k, v in report["skipped"].items() if v} == {
      "undecodable_image": 1, "malformed_json": 1, "missing_target": 1, "several_media": 1,
      "duplicate_key": 1}
  assert set(report["skipped"]) == set(manifest.REASONS)
  assert [(p["file"], p["line"], p["reason"]) for p in report["problems"]] == [
      ("00000.tar", 3, "undecodable_image"), ("00001.tar", 2, "malformed_json"),
      ("00001.tar", 3, "missing_target"), ("00001.tar", 4, "several_media"),
      ("00002.tar", 1, "duplicate_key")]
  assert report["records"] == {"train_caption": 4, "validation_caption": 3}


def test_records_equal_the_shards_samples(built):
  _, cfg = built
  ds = pipeline.data_source(cfg, "web_caption", "train")
  got = {ds[i]["key"].decode(): ds[i] for i in range(len(ds))}
  assert sorted(got) == ["000000000", "000000001", "000010000", "000020001"]
  r = got["000020001"]
  assert r["image"] == _png(1) and [c.decode() for c in r["captions"]] == ["color 1."]
  assert r["file"] == b"00002.tar:2"
  meta = json.loads(r["metadata"])
  assert meta == {"status": "success", "url": "http://x/000020001.png"}
  assert len(pipeline.data_source(cfg, "web_caption", "validation")) == 3


def test_webdataset_flag_entries_keep_commas():
  assert build.named("a:s/{x,y}.tar", "webdataset") == ("a", "s/{x,y}.tar")
