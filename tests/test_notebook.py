"""notebooks/evaluate_checkpoint.ipynb runs top to bottom (nbclient) against a
checkpoint this test trains (small model, small world, 2 steps)."""
import json
import os

import jax
import nbformat
import numpy as np
import pytest

from configs import pretrain_vl
from metalm_jax.evaluate import metrics as metrics_lib
from metalm_jax.train import trainer as trainer_lib
from tests.test_finetune import _small

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, "notebooks", "evaluate_checkpoint.ipynb")


def _outputs(cell, kind):
  return [o for o in cell.get("outputs", []) if o.get("output_type") == kind or
          (kind == "image" and "image/png" in o.get("data", {}))]


def test_notebook_runs_against_a_checkpoint(tmp_path, monkeypatch):
  nbclient = pytest.importorskip("nbclient")
  c = pretrain_vl.get_config("size=tiny,steps=2")
  _small(c, str(tmp_path / "tfds"))
  c.eval_every = 2
  work = str(tmp_path / "run")
  trainer_lib.train(c, work, devices=jax.devices()[:1])
  assert os.path.exists(os.path.join(work, "config.json"))  # the notebook reads it

  nb = nbformat.read(NOTEBOOK, as_version=4)
  params = [cell for cell in nb.cells if "parameters" in cell.metadata.get("tags", [])]
  assert len(params) == 1
  params[0].source = (f"REPO = {ROOT!r}\nINSTALL = False\nCHECKPOINT = {work!r}\n"
                      "CONFIG_JSON = ''\nCONFIG_FILE = ''\nNUM_IMAGES = 2\n"
                      "EVAL_EXAMPLES = 4\n")
  monkeypatch.setenv("PYTHONPATH", ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                          resources={"metadata": {"path": str(tmp_path)}}).execute()

  code = [cell for cell in nb.cells if cell.cell_type == "code"]
  text = lambda cell: "".join(o.get("text", "") for o in _outputs(cell, "stream"))
  assert "config from the checkpoint's config.json" in "".join(
      o.get("text", "") for cell in code for o in _outputs(cell, "stream"))
  # Captions / answers: a figure and one printed dict per image.
  shown = next(cell for cell in code if "set_title" in cell.source)
  assert _outputs(shown, "image")
  assert text(shown).count("'caption':") == 2
  # The evaluator's table, and its accuracy recomputed from its predictions.
  ev = next(cell for cell in code if "run_evals" in cell.source)
  table = "".join(o["data"].get("text/markdown", "") for o in _outputs(ev, "display_data"))
  assert "| vqa | accuracy |" in table
  rows = [json.loads(l) for l in open(tmp_path / "notebook_evals" / "evals" / "vqa_step_0.jsonl")]
  acc = np.mean([metrics_lib.vqa_accuracy(r["prediction"], r["references"]) for r in rows])
  saved = json.load(open(tmp_path / "notebook_evals" / "evals" / "step_0.json"))
  assert saved["results"]["vqa"]["accuracy"] == pytest.approx(acc)
  assert len(rows) == 4
  # Training curves: both steps of loss, one eval point, plotted.
  curves = code[-1]
  assert "{'loss': 2, 'eval_loss': 1}" in text(curves)
  assert _outputs(curves, "image")
