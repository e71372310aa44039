"""The Grain pipeline over the embedded world: contract and span properties
over many batches, pixel values against a float64 reference, determinism,
exact resume (in-process and with worker processes), per-process shards."""
import io
import os
import subprocess
import sys

import grain
import numpy as np
import orbax.checkpoint as ocp
import pytest
from PIL import Image

from metalm_jax import batch as batch_lib
from metalm_jax.data import pipeline, prepare
from tests import world_config as testing
from metalm_jax.data import tokenizer as tok_lib
from metalm_jax.media.images import CLIP_MEAN, CLIP_STD


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("tfds"))


def _batches(it, n):
  return [pipeline.split_stats(next(it)) for _ in range(n)]


def _assert_same(a, b):
  (ba, sa), (bb, sb) = a, b
  assert sa == sb
  for k in batch_lib.DECODER_KEYS:
    np.testing.assert_array_equal(ba[k], bb[k], err_msg=k)
  for name in ba["encoders"]:
    for k in ba["encoders"][name]:
      np.testing.assert_array_equal(ba["encoders"][name][k], bb["encoders"][name][k])


def _runs(mask):
  """[(start, length)] of True runs."""
  d = np.diff(np.r_[0, mask.astype(int), 0])
  starts, ends = np.flatnonzero(d == 1), np.flatnonzero(d == -1)
  return list(zip(starts, ends - starts))


@pytest.mark.parametrize("kind,size", [("vl", "tiny"), ("lang", "tiny"), ("vl", "bench")])
def test_batch_properties(data_dir, kind, size):
  cfg = testing.test_config(kind, size, data_dir)
  tok = prepare.load_tokenizer(cfg)
  model, sp = cfg.model, cfg.data.spans
  offsets = batch_lib.dock_offsets(model.encoders)
  b_size, l = 8, cfg.data.seq_len
  it = pipeline.make_iterator(cfg, "train", batch_size=b_size)
  covered = total = 0
  for batch, stats in _batches(it, 12):
    batch_lib.validate_batch(batch, model, model.decoder.vocab_size)
    assert batch["tokens"].shape == (b_size, l) and stats["examples"] > 0
    for r in range(b_size):
      tokens, seg = batch["tokens"][r], batch["segment_ids"][r]
      dmask, didx, lmask = batch["dock_mask"][r], batch["dock_index"][r], batch["loss_mask"][r] > 0
      n = int((seg > 0).sum())
      assert (seg[:n] > 0).all() and (seg[n:] == 0).all()  # padding only at the end
      for s in np.unique(seg[:n]):
        where = np.flatnonzero(seg == s)
        np.testing.assert_array_equal(batch["positions"][r][where], np.arange(len(where)))
        assert tokens[where[0]] == tok.bos
      t = np.flatnonzero(lmask)
      np.testing.assert_array_equal(batch["targets"][r][t], tokens[t + 1])
      assert not dmask[t + 1].any() and (seg[t + 1] == seg[t]).all()
      row_cov = 0
      for start, length in _runs(dmask):
        # A run may hold adjacent spans of different encoders: split by encoder.
        for name in sorted(model.encoders):
          enc = model.encoders[name]
          tl = batch_lib.slot_length(enc)
          sel = np.arange(start, start + length)
          sel = sel[(didx[sel] >= offsets[name]) & (didx[sel] < offsets[name] + enc.max_items * tl)]
          if not len(sel):
            continue
          assert len(np.unique(seg[sel])) == 1  # never across a segment boundary
          item, j = np.divmod(didx[sel] - offsets[name], tl)
          if len(np.unique(item)) != 1:  # adjacent items: check the first, then the rest
            cut = int(np.flatnonzero(item != item[0])[0])
            assert item[cut] == item[0] + 1
            sel, item, j = sel[:cut], item[:cut], j[:cut]
          np.testing.assert_array_equal(j, np.arange(len(sel)))  # element j at j-th position
          if enc.type == "vit":
            assert len(sel) == tl and batch["encoders"][name]["valid"][r, item[0]]
            assert tokens[sel[0] - 1] == tok.image_start and tokens[sel[-1] + 1] == tok.image_end
          else:
            e = batch["encoders"][name]
            assert e["mask"][r, item[0], :len(sel)].all()
            assert e["mask"][r, item[0]].sum() == len(sel)
            np.testing.assert_array_equal(e["tokens"][r, item[0], :len(sel)], tokens[sel])
            prefix = tokens[sel[0] - 1] == tok.image_end
            if prefix:
              assert 1 <= len(sel) <= sp.prefix_max
            else:
              assert sp.min_len <= len(sel) <= sp.max_len
              assert tokens[sel[0]] != tok.bos
              row_cov += len(sel)
      if not (tokens == tok.image_start).any() and sp.encoder:
        target = round(sp.ratio * n)
        assert row_cov < target + sp.min_len
        covered, total = covered + row_cov, total + target
  if sp.encoder and total:
    assert covered >= 0.8 * total, (covered, total)


def test_pixels_and_captions_match_the_records(data_dir):
  cfg = testing.test_config("vl", "tiny", data_dir, mixture={"world_caption": 1.0})
  tok = prepare.load_tokenizer(cfg)
  src = pipeline.data_source(cfg.data, "world_caption", "train")
  it = pipeline.make_iterator(cfg, "train", batch_size=4, shuffle=False)
  batch, _ = pipeline.split_stats(next(it))
  for r in range(4):
    rec = src[r]
    img = np.asarray(Image.open(io.BytesIO(rec["image"])).convert("RGB"), np.float64)
    ref = (img / 255.0 - np.array(CLIP_MEAN)) / np.array(CLIP_STD)
    np.testing.assert_allclose(batch["encoders"]["vision"]["pixels"][r, 0], ref, atol=1e-5)
    seg = batch["segment_ids"][r] > 0
    text = tok.decode(batch["tokens"][r][seg])
    assert text in [c.decode() for c in rec["captions"]]


@pytest.mark.parametrize("kind", ["vl", "lang"])
def test_same_seed_same_batches_and_exact_resume(data_dir, kind):
  cfg = testing.test_config(kind, "tiny", data_dir)
  a = _batches(pipeline.make_iterator(cfg, "train", batch_size=4), 6)
  it = pipeline.make_iterator(cfg, "train", batch_size=4)
  b = _batches(it, 3)
  state = it.get_state()
  b += _batches(it, 3)
  for x, y in zip(a, b):
    _assert_same(x, y)
  other = _batches(pipeline.make_iterator(cfg, "train", batch_size=4, seed=1), 1)[0]
  assert not np.array_equal(other[0]["tokens"], a[0][0]["tokens"])
  fresh = pipeline.make_iterator(cfg, "train", batch_size=4)
  fresh.set_state(state)
  for x, y in zip(_batches(fresh, 3), a[3:]):
    _assert_same(x, y)


@pytest.mark.integration
def test_resume_with_worker_processes_through_orbax(data_dir, tmp_path):
  cfg = testing.test_config("vl", "tiny", data_dir, num_workers=2)
  it = pipeline.make_iterator(cfg, "train", batch_size=4)
  _batches(it, 3)
  mgr = ocp.CheckpointManager(str(tmp_path / "ckpt"), item_names=("data_iter",))
  mgr.save(3, args=ocp.args.Composite(data_iter=grain.checkpoint.CheckpointSave(it)))
  mgr.wait_until_finished()
  uninterrupted = _batches(it, 4)
  it.close()
  restored = pipeline.make_iterator(cfg, "train", batch_size=4)
  mgr.restore(3, args=ocp.args.Composite(data_iter=grain.checkpoint.CheckpointRestore(restored)))
  rest = _batches(restored, 4)
  restored.close()
  for x, y in zip(rest, uninterrupted):
    _assert_same(x, y)


def test_process_shards_are_disjoint(data_dir):
  cfg = testing.test_config("vl", "tiny", data_dir, mixture={"world_caption": 1.0})
  src = pipeline.data_source(cfg.data, "world_caption", "train")
  seen = {}
  for p in range(2):
    it = pipeline.make_iterator(cfg, "train", batch_size=1, process_index=p, process_count=2,
                                shuffle=False, num_epochs=1)
    rows = [pipeline.split_stats(b)[0]["encoders"]["vision"]["pixels"][0, 0] for b in it]
    seen[p] = rows
    assert len(rows) == len(src) // 2
  for p in range(2):
    for k in (0, 1, 5):
      rec = src[2 * k + p]
      img = np.asarray(Image.open(io.BytesIO(rec["image"])), np.float64)
      ref = (img / 255.0 - np.array(CLIP_MEAN)) / np.array(CLIP_STD)
      np.testing.assert_allclose(seen[p][k], ref, atol=1e-5)


def test_config_mismatches_name_the_field(data_dir, tmp_path):
  cfg = testing.test_config("lang", "tiny", data_dir)
  prepare.load_tokenizer(cfg)  # prepares the 1024 tokenizer
  cfg.data.tokenizer = prepare.tokenizer_path(cfg.data, 1024)
  cfg.model.decoder.vocab_size = 1000
  with pytest.raises(ValueError, match="config.model.decoder.vocab_size=1000"):
    pipeline.make_iterator(cfg, "train", batch_size=2)
  cfg = testing.test_config("lang", "tiny", data_dir)
  cfg.data.spans.encoder = "words"
  with pytest.raises(ValueError, match="config.data.spans.encoder='words'"):
    pipeline.make_iterator(cfg, "train", batch_size=2)
  cfg = testing.test_config("vl", "tiny", data_dir)
  cfg.data.spans.prefix_max = 17
  with pytest.raises(ValueError, match="config.data.spans.prefix_max=17 exceeds"):
    pipeline.make_iterator(cfg, "train", batch_size=2)
  cfg = testing.test_config("lang", "tiny", data_dir, seq_len=4096)
  with pytest.raises(ValueError, match="config.data.seq_len=4096"):
    pipeline.make_iterator(cfg, "train", batch_size=2)
  cfg = testing.test_config("vl", "bench", data_dir, seq_len=64)
  with pytest.raises(ValueError, match="config.data.seq_len=64 cannot hold an image span"):
    pipeline.make_iterator(cfg, "train", batch_size=2)
  cfg = testing.test_config("vl", "tiny", data_dir, mixture={"world_caption": 0.0})
  with pytest.raises(ValueError, match="positive weights"):
    pipeline.make_iterator(cfg, "train", batch_size=2)
  with pytest.raises(ValueError, match="split='dev'"):
    pipeline.make_iterator(testing.test_config("vl", "tiny", data_dir), "dev", batch_size=2)


_PREPARE = """
import sys
sys.path.insert(0, {root!r})
from metalm_jax.data import prepare
from tests import world_config as testing
cfg = testing.test_config("lang", "tiny", {d!r})
print(prepare.ensure_prepared(cfg.data, 1024))
"""


@pytest.mark.integration
def test_concurrent_first_use_prepares_once(tmp_path):
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  code = _PREPARE.format(root=root, d=str(tmp_path))
  procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE) for _ in range(2)]
  outs = [p.communicate(timeout=240) for p in procs]
  assert all(p.returncode == 0 for p in procs), outs[0][1][-2000:]
  paths = {o[0].decode().strip().splitlines()[-1] for o in outs}
  assert len(paths) == 1
  assert tok_lib.Tokenizer.from_file(paths.pop()).vocab_size == 1024


@pytest.mark.slow  # ~40 s on a loaded 2-core CPU (jit of the tiny model)
def test_model_consumes_pipeline_batches(data_dir):
  import jax
  import jax.numpy as jnp
  from metalm_jax.models.metalm import build_model, init_variables
  cfg = testing.test_config("vl", "tiny", data_dir, mixture={"world_caption": 1.0,
                                                             "world_text": 1.0})
  batch, _ = pipeline.split_stats(next(pipeline.make_iterator(cfg, "train", batch_size=4)))
  model = build_model(cfg.model)
  variables = init_variables(model, jax.random.key(0), 4, cfg.data.seq_len)
  logits = jax.jit(model.apply)(variables, jax.tree.map(jnp.asarray, batch))
  assert logits.shape == (4, cfg.data.seq_len, cfg.model.decoder.vocab_size)
  logp = jax.nn.log_softmax(logits)
  nll = -jnp.take_along_axis(logp, batch["targets"][..., None], -1)[..., 0]
  loss = float((nll * batch["loss_mask"]).sum() / batch["loss_mask"].sum())
  # An untrained model is near uniform: loss ~ log(vocab).
  assert abs(loss - np.log(cfg.model.decoder.vocab_size)) < 1.0
