"""A tiny stand-in for metalm_jax.data.pipeline (same make_iterator /
split_stats signatures) plus small train configs, for the trainer tests
(a helper module: no tests here).

Each example is a learnable toy: an image docked at positions 1..T, then an
arithmetic token run whose step is fixed and whose start is random.
"""
import os
import tempfile

import grain
import ml_collections as mlc
import numpy as np

from metalm_jax import config_names
from metalm_jax import batch as batch_lib
from metalm_jax import presets
from metalm_jax.train import config_defaults

SEQ_LEN = 32
# Identical programs (same model, mesh and shapes) compile once per machine.
CACHE_DIR = os.path.join(tempfile.gettempdir(), "metalm_jax_test_xla_cache")


def tiny_model_cfg():
  cfg = presets.model_config("tiny")
  cfg.decoder.update(vocab_size=64, num_layers=1, emb_dim=32, num_heads=2, mlp_dim=64, max_len=64)
  cfg.encoders = {"vision": presets.vit(image_size=16, patch_size=8, num_layers=1, emb_dim=32,
                                        num_heads=2, mlp_dim=64)}
  return mlc.ConfigDict(cfg)


def tiny_train_config(**kw):
  c = config_defaults.trainer_config()
  c.model = tiny_model_cfg()
  c.data = mlc.ConfigDict(dict(seq_len=SEQ_LEN, num_examples=256))
  c.batch_size = 8
  c.total_steps = 6
  c.log.every_steps = 1
  c.eval_loss.every_steps = 3
  c.eval_loss.num_batches = 2
  c.optimizer.lr = 3e-3
  c.optimizer.warmup_steps = 2
  c.checkpoint.every_steps = 3
  c.metrics.peak_flops = 1e11
  c.mesh.update(data=-1, fsdp=1, tensor=1)
  c.compilation_cache_dir = CACHE_DIR
  for k, v in kw.items():  # dotted fields; `eval_every=0` is read as its new name
    target = c
    parts = config_names.new_field(k).split(".")
    for p in parts[:-1]:
      target = target[p]
    target[parts[-1]] = v
  return c


class _Example(grain.transforms.Map):
  def __init__(self, model_cfg, seq_len, split):
    self.model_cfg, self.seq_len, self.split = model_cfg, seq_len, split

  def map(self, index):
    cfg = self.model_cfg
    rng = np.random.default_rng([int(index), 0 if self.split == "train" else 1])
    b = batch_lib.dummy_batch(cfg, 1, self.seq_len)
    ex = {k: v[0] for k, v in b.items() if k != "encoders"}
    ex["encoders"] = {n: {k: v[0] for k, v in e.items()} for n, e in b["encoders"].items()}
    v = cfg.decoder.vocab_size
    t = batch_lib.slot_length(cfg.encoders.vision)
    start = int(rng.integers(0, v))
    toks = np.zeros(self.seq_len, np.int32)
    toks[0] = 1
    toks[t + 1:] = (start + 3 * np.arange(self.seq_len - t - 1)) % v
    ex["tokens"] = toks
    ex["targets"] = np.roll(toks, -1).astype(np.int32)
    ex["segment_ids"] = np.ones(self.seq_len, np.int32)
    ex["positions"] = np.arange(self.seq_len, dtype=np.int32)
    ex["dock_mask"][1:t + 1] = True
    ex["dock_index"][1:t + 1] = np.arange(t)
    pix = ex["encoders"]["vision"]["pixels"]
    pix[:] = rng.normal(size=pix.shape).astype(np.float32)
    ex["encoders"]["vision"]["valid"][0] = True
    lm = np.ones(self.seq_len, np.float32)
    lm[:t] = 0.0          # targets 1..t are docked
    lm[-1] = 0.0          # no target after the end
    ex["loss_mask"] = lm
    ex["stats"] = {"too_long": np.int32(index % 5 == 0)}
    return ex


def make_iterator(config, split, *, batch_size, process_index, process_count, seed, shuffle,
                  num_epochs):
  n = config.data.num_examples if split == "train" else 64
  ds = grain.MapDataset.range(n)
  if shuffle:
    ds = ds.shuffle(seed=seed)
  ds = ds[process_index::process_count]
  ds = ds.map(_Example(config.model, config.data.seq_len, split))
  ds = ds.batch(batch_size, drop_remainder=True)
  ds = ds.repeat(num_epochs)
  return iter(ds.to_iter_dataset())


def split_stats(batch):
  batch = dict(batch)
  stats = batch.pop("stats")
  return batch, {k: int(np.sum(v)) for k, v in stats.items()}
