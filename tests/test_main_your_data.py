"""From a folder to a finetuned, evaluated model through the real entry points
(docs/your-data.md): `python -m metalm_jax.data.build --jsonl=NAME:FOLDER`
builds the set, then `python -m metalm_jax.main` with
configs/finetune_caption.py:size=tiny,dataset=NAME trains on it and scores
CIDEr on its validation split."""
import json
import subprocess
import sys

import pytest

from tests import main_helpers as H
from tests.your_data_fixtures import write_folder

pytestmark = pytest.mark.integration


def test_folder_to_finetuned_and_evaluated_caption_model(tmp_path):
  folder = write_folder(tmp_path / "src", n_train=12, n_val=8)
  data_dir, work = tmp_path / "tfds", tmp_path / "w"
  build = subprocess.run(
      [sys.executable, "-m", "metalm_jax.data.build", f"--data_dir={data_dir}", "--world=",
       f"--jsonl=mine:{folder}", "--max_bad_fraction=0.5"],
      cwd=H.ROOT, env=H.env(), capture_output=True, text=True, timeout=300)
  assert build.returncode == 0, build.stdout[-2000:] + build.stderr[-3000:]
  assert "train.jsonl:5: malformed_json" in build.stderr  # the log names file and line
  assert '"sources": ["mine_caption", "mine_text", "mine_vqa"]' in build.stdout
  flags = ["--config=configs/finetune_caption.py:size=tiny,dataset=mine"] + [
      a for a in H.SMALL if not a.startswith("--config=")] + [
      "--config.total_steps=4", "--config.checkpoint.every_steps=4",
      "--config.evals.caption.every_steps=4", "--config.evals.caption.num_examples=8",
      "--config.evals.zeroshot.every_steps=4", "--config.evals.zeroshot.num_examples=8",
      "--config.evals.caption.max_new_tokens=4", "--config.evals.zeroshot.max_new_tokens=4"]
  p = subprocess.run([sys.executable, "-m", "metalm_jax.main", f"--workdir={work}", *flags,
                      f"--config.data.data_dir={data_dir}"],
                     cwd=H.ROOT, env=H.env(), capture_output=True, text=True, timeout=600)
  assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
  assert "step 4/4 | loss" in p.stdout
  final = json.loads((work / "final_metrics.json").read_text())
  config = json.loads((work / "config.json").read_text())
  assert config["data"]["mixture"] == {"mine_caption_prompted": 1.0}
  assert config["evals"]["caption"]["source"] == "mine_caption"
  assert config["evals"]["caption"]["split"] == "validation"
  cider = [k for k in final if k.endswith("CIDEr") and k.startswith("caption")]
  assert cider and all(final[k] >= 0.0 for k in cider), sorted(final)
