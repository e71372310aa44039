"""notebooks/evaluate_checkpoint.ipynb, every cell, as a user runs it.

The kernel runs in a throwaway venv layered on the test venv (a .pth file adds
the test venv's site-packages), so the notebook's install cell really runs
`pip install -e REPO[notebook]` against this checkout while pip sees the
compatible jax already there: it must leave jax / jaxlib alone (same versions
before and after, no copy installed into the throwaway venv) and say that no
restart is needed. Two cases, on the tiny model of tests/export_fixtures.py (a tokenizer.json):
  - its training workdir (Orbax checkpoints + the metrics the trainer's writer
    writes), with a folder of the user's images (an RGBA PNG, a grayscale
    JPEG, a file that is no image) and a question;
  - its export dir with no image folder: the embedded world's scenes and their
    own questions.
The workdir case also runs the metrics cells: VQA and caption evaluators on
the small `test` world through metalm_jax.checkpoint_eval (results equal to
an in-process `evaluate`, the worst examples drawn), compared with the export
dir (the same params: every difference 0).
The notebook's captions and answers must equal an in-process Predictor's on the
same files (greedy ids, so exact; the workdir's latest step holds the exported
params).
"""
import glob
import io
import json
import os
import site
import subprocess
import sys

import jax
import nbformat
import numpy as np
import pytest
from PIL import Image

from metalm_jax import checkpoint_eval
from metalm_jax.convert.predictor import Predictor
from metalm_jax.data import world
from metalm_jax.train import metrics as metrics_lib
from tests import export_fixtures as F

pytestmark = pytest.mark.integration

nbclient = pytest.importorskip("nbclient")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, "notebooks", "evaluate_checkpoint.ipynb")
KERNEL = "metalm-notebook-test"
NEW_TOKENS = 4
EVALS = dict(
    vqa=dict(type="vqa", source="world_vqa", num_examples=4, batch_size=4, max_new_tokens=3,
             num_baseline_examples=8),
    caption=dict(type="caption", source="world_caption", num_examples=3, batch_size=4,
                 max_new_tokens=4, meteor=False, num_baseline_examples=8))
NO_EVALS = dict(EVALS={}, SPLIT="validation", NUM_EXAMPLES=4, DATA_DIR="", WORLD="",
                COMPARE_DIR="", NUM_WORST=2)
VERSIONS = ("import importlib.metadata as m, json; "
            "print(json.dumps({n: m.version(n) for n in ('jax', 'jaxlib')}))")


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
  """{python, site, jupyter_path}: a venv without pip whose site-packages
  pulls in this interpreter's (pip, ipykernel, jax ... all seen as installed)."""
  root = tmp_path_factory.mktemp("nbvenv")
  env = root / "venv"
  subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True)
  (sp,) = glob.glob(str(env / "lib" / "python*" / "site-packages"))
  with open(os.path.join(sp, "zz_test_venv_base.pth"), "w") as f:
    f.writelines(f"import site; site.addsitedir({p!r})\n" for p in site.getsitepackages())
  kernel_dir = root / "jupyter" / "kernels" / KERNEL
  kernel_dir.mkdir(parents=True)
  (kernel_dir / "kernel.json").write_text(json.dumps({
      "argv": [str(env / "bin" / "python"), "-m", "ipykernel_launcher", "-f",
               "{connection_file}"],
      "display_name": "throwaway venv", "language": "python"}))
  return dict(python=str(env / "bin" / "python"), site=sp, jupyter_path=str(root / "jupyter"))


@pytest.fixture(scope="module")
def model(tmp_path_factory):
  """{export, workdir, predictor}: the shared export, a workdir of the same
  params with 3 logged steps and one evaluation, an in-process Predictor."""
  setup = F.exported(tmp_path_factory)
  work = F.write_workdir(setup, str(setup["tmp"] / "notebook_run"))
  w = metrics_lib.Writer(work)
  w.rewind(None)
  for step, loss in ((1, 4.0), (2, 3.5), (3, 3.25)):
    w.write(step, {"loss": loss})
  w.write(3, {"eval_loss": 3.5})
  w.close()
  return dict(export=setup["out"], workdir=work,
              predictor=Predictor(setup["out"], max_new_tokens=NEW_TOKENS))


def _versions(python):
  return json.loads(subprocess.run([python, "-c", VERSIONS], check=True, capture_output=True,
                                   text=True).stdout)


def _run(venv, monkeypatch, tmp_path, params):
  """Executes the notebook with `params` in its parameter cell; returns
  (code cells, stream text per cell, working folder)."""
  nb = nbformat.read(NOTEBOOK, as_version=4)
  cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
  assert len(cells) == 1
  work = tmp_path / "nested" / "work"
  cells[0].source = "\n".join(f"{k} = {v!r}" for k, v in dict(
      params, REPO=ROOT, MAX_NEW_TOKENS=NEW_TOKENS, WORK_DIR=str(work)).items())
  monkeypatch.setenv("JUPYTER_PATH", venv["jupyter_path"])
  monkeypatch.delenv("PYTHONPATH", raising=False)  # metalm_jax comes from the install
  before = _versions(venv["python"])
  nbclient.NotebookClient(nb, timeout=600, kernel_name=KERNEL,
                          resources={"metadata": {"path": str(tmp_path)}}).execute()
  # The install cell left jax alone: same versions, no copy in the venv.
  assert _versions(venv["python"]) == before == {"jax": jax.__version__,
                                                "jaxlib": jax.__version__}
  assert not glob.glob(os.path.join(venv["site"], "jax*"))
  assert glob.glob(os.path.join(venv["site"], "metalm_jax-*.dist-info"))
  code = [c for c in nb.cells if c.cell_type == "code"]
  text = [("".join(o.get("text", "") for o in c.outputs if o.output_type == "stream"))
          for c in code]
  install = text[1]
  assert f"jax: {before['jax']} (unchanged)" in install
  assert f"jaxlib: {before['jaxlib']} (unchanged)" in install
  assert "no restart needed" in install and "RESTART" not in install
  assert f"metalm_jax from {os.path.join(ROOT, 'metalm_jax')}\n" in text[2]
  return code, text, work


def _images(code):
  return [o for c in code for o in c.outputs if "image/png" in o.get("data", {})]


def _expected(predictor, items):
  """Captions and answers of the in-process Predictor: [{image, caption, qa}]."""
  caps = predictor.caption([data for _, data, _ in items])
  out = []
  for (name, data, qs), cap in zip(items, caps):
    answers = predictor.vqa([data] * len(qs), qs) if qs else []
    out.append(dict(image=name, caption=cap, qa=[[q, a] for q, a in zip(qs, answers)]))
  return out


def test_notebook_on_a_workdir_and_the_users_images(venv, model, tmp_path, monkeypatch):
  folder = tmp_path / "my_images"
  folder.mkdir()
  rng = np.random.default_rng(0)
  rgba = rng.integers(0, 256, (20, 30, 4), dtype=np.uint8)
  Image.fromarray(rgba, "RGBA").save(folder / "b_photo.png")
  buf = io.BytesIO()
  Image.fromarray(rng.integers(0, 256, (23, 17), dtype=np.uint8), "L").save(buf, "JPEG")
  (folder / "a_scan.JPG").write_bytes(buf.getvalue())
  (folder / "notes.txt").write_text("not an image")
  questions = ["what colour is the cat ?"]
  data_dir = str(tmp_path / "tfds")
  code, text, work = _run(venv, monkeypatch, tmp_path, dict(
      NO_EVALS, MODEL_DIR=model["workdir"], IMAGE_DIR=str(folder), QUESTIONS=questions,
      NUM_IMAGES=5, EVALS=EVALS, DATA_DIR=data_dir, WORLD="test", COMPARE_DIR=model["export"]))

  assert "model from the workdir" in text[2]
  named = json.loads(open(os.path.join(model["workdir"], "config.json")).read())["data"]
  assert f"tokenizer: HfTokenizer, the file config.json names: {named['tokenizer']}," in text[2]
  assert "2 images: a_scan.JPG, b_photo.png" in text[3]
  got = json.loads((work / "predictions.json").read_text())
  files = [(n, (folder / n).read_bytes(), questions) for n in ("a_scan.JPG", "b_photo.png")]
  assert got == _expected(model["predictor"], files)
  assert text[4].count("'caption':") == 2
  assert (work / "predictions.png").read_bytes()[:4] == b"\x89PNG"
  # The curves: the three logged steps and the one evaluation.
  assert "{'loss': 3, 'eval_loss': 1}" in text[5]
  # Metrics: the trainer's evaluators, as an in-process evaluate() gives them.
  want = checkpoint_eval.evaluate(
      model["workdir"], {n: dict(e, split="validation") for n, e in EVALS.items()},
      data=dict(data_dir=data_dir, world="test"), out_dir=str(tmp_path / "want"), progress=False)
  got = json.loads((work / "metrics_notebook_run.json").read_text())
  assert got["step"] == 7 and got["results"] == want.results
  assert json.dumps(want.results, sort_keys=True) in text[6]
  # The worst examples: NUM_WORST per scored evaluator, lowest score first.
  worst = [l.split(" ") for l in text[7].splitlines() if l.startswith(("vqa ", "caption "))]
  assert [(w[0], int(w[1])) for w in worst] == [
      (n, r["index"]) for n in ("caption", "vqa") for r in want.rows[n][:2]]
  assert "examples shown: 4" in text[7]
  assert (work / "worst_vqa.png").exists() and (work / "worst_caption.png").exists()
  # Side by side with the export of the same params: equal metrics.
  cmp = json.loads((work / "compare.json").read_text())
  assert {(r["evaluator"], r["metric"]) for r in cmp["rows"]} == {
      (n, k) for n, r in want.results.items() for k in r}
  assert all(r["diff"] == 0 or np.isnan(r["diff"]) for r in cmp["rows"])
  assert f"compared {len(cmp['rows'])} metrics" in text[8]
  assert (work / "compare.png").exists()
  assert len(_images(code)) == 2 + 2 + 1 and (work / "curves.png").exists()


def test_notebook_on_an_export_dir_and_the_embedded_world(venv, model, tmp_path, monkeypatch):
  export_dir = model["export"]
  code, text, work = _run(venv, monkeypatch, tmp_path, dict(
      NO_EVALS, MODEL_DIR=export_dir, IMAGE_DIR="", QUESTIONS=["unused"], NUM_IMAGES=2))

  assert "model from the export dir" in text[2]
  assert "tokenizer: HfTokenizer, the file config.json names: tokenizer.json," in text[2]
  scenes = [world.scene_record(0, "validation", i, 16, doc_paragraphs=1) for i in range(2)]
  items = [(f"world validation {i}", s["image"], list(s["questions"][:2]))
           for i, s in enumerate(scenes)]
  got = json.loads((work / "predictions.json").read_text())
  assert got == _expected(model["predictor"], items)
  assert all(len(r["qa"]) == 2 for r in got)
  assert "export dir: its training curves are in the workdir" in text[5]
  assert len(_images(code)) == 1 and not (work / "curves.png").exists()
  assert "EVALS is empty: no metrics" in text[6] and "examples shown: 0" in text[7]
  assert "nothing to compare" in text[8]
