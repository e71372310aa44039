"""The documented override --config.data.manual_dirs.metalm_coco_karpathy=DIR
works through the real entry point: COCO Karpathy is built from DIR and the
captioning finetune trains on it."""
import json
import subprocess
import sys
import types

import pytest
import tensorflow_datasets as tfds
from PIL import Image

from metalm_jax import presets
from metalm_jax.data import builders
from tests import main_helpers as H
from tests.train_standin import CACHE_DIR

TINY_PAPER = [  # the paper caption config, shrunk to a CPU smoke run
    "--config=configs/finetune_caption.py:size=paper", "--config.data.world=test",
    "--config.data.seq_len=64", "--config.batch_size=2", "--config.total_steps=1",
    "--config.eval_loss.every_steps=0", "--config.log.every_steps=1",
    "--config.model.dtype=float32",
    "--config.metrics.peak_flops=1e11", "--config.sharding.min_fsdp_size=1024",
    f"--config.compilation_cache_dir={CACHE_DIR}",
    "--config.model.decoder.vocab_size=1024", "--config.model.decoder.num_layers=1",
    "--config.model.decoder.emb_dim=32", "--config.model.decoder.num_heads=2",
    "--config.model.decoder.mlp_dim=64", "--config.model.decoder.max_len=64",
    "--config.model.decoder.remat_policy=none", "--config.model.encoders.vision.image_size=32",
    "--config.model.encoders.vision.num_layers=1", "--config.model.encoders.vision.emb_dim=32",
    "--config.model.encoders.vision.num_heads=2", "--config.model.encoders.vision.mlp_dim=64",
]


def _coco(root):
  images = []
  for k, split in enumerate(["train", "train", "restval", "val", "test"]):
    sub = "train2014" if split == "train" else "val2014"
    (root / sub).mkdir(parents=True, exist_ok=True)
    name = f"COCO_{sub}_{k:012d}.jpg"
    Image.new("RGB", (40, 40), (40 * k, 90, 200)).save(root / sub / name, format="JPEG")
    images.append({"filepath": sub, "filename": name, "split": split, "cocoid": k,
                   "sentences": [{"raw": f"a blue square number {k}."}]})
  (root / "dataset_coco.json").write_text(json.dumps({"images": images}))


@pytest.mark.integration
def test_manual_dirs_override_through_main(tmp_path):
  _coco(tmp_path / "coco")
  data_dir, work = tmp_path / "tfds", tmp_path / "w"
  cmd = [sys.executable, "-m", "metalm_jax.main", f"--workdir={work}", *TINY_PAPER,
         f"--config.data.data_dir={data_dir}",
         f"--config.data.manual_dirs.metalm_coco_karpathy={tmp_path / 'coco'}"]
  p = subprocess.run(cmd, cwd=H.ROOT, env=H.env(), capture_output=True, text=True, timeout=600)
  assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
  assert "step 1/1 | loss" in p.stdout
  ds = tfds.data_source("metalm_coco_karpathy", data_dir=str(data_dir))
  assert {k: len(v) for k, v in ds.items()} == {"train": 3, "validation": 1, "test": 1}
  assert json.loads((work / "config.json").read_text())["data"]["manual_dirs"][
      "metalm_coco_karpathy"] == str(tmp_path / "coco")


def test_every_manual_builder_has_a_manual_dirs_entry():
  modules = [m for m in vars(builders).values() if isinstance(m, types.ModuleType)]
  classes = [c for m in modules for c in vars(m).values() if isinstance(c, type) and
             issubclass(c, tfds.core.DatasetBuilder) and c.__module__ == m.__name__]
  manual = {c.name for c in classes if c.MANUAL_DOWNLOAD_INSTRUCTIONS}
  assert manual == set(presets.MANUAL_DATASETS)
  assert dict(presets.data_config("vl", "paper_vl").manual_dirs) == {
      n: "" for n in presets.MANUAL_DATASETS}
