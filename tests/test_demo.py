"""metalm_jax/demo.py on the tiny workdir of tests/export_fixtures.py: the
grid PNG has one cell per scene, and the console holds each scene's caption
and answer, equal to an in-process Predictor's on the same scenes."""
import json
import os

import numpy as np
import pytest
from PIL import Image

from metalm_jax import demo
from metalm_jax.convert.predictor import Predictor
from tests import export_fixtures as F

SCENES = 3
NEW_TOKENS = 4


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  return F.write_workdir(F.exported(tmp_path_factory),
                         str(tmp_path_factory.mktemp("demo") / "run"))


def test_demo_writes_the_grid_and_prints_captions_and_answers(workdir, tmp_path, capsys):
  out = str(tmp_path / "grid.png")
  items = demo.show(workdir, num_scenes=SCENES, max_new_tokens=NEW_TOKENS, out=out)
  text = capsys.readouterr().out
  assert len(items) == SCENES

  img = Image.open(out)
  assert img.format == "PNG"
  assert img.size == (demo.CELL * SCENES, demo.PICTURE + 8 + demo.TEXT_HEIGHT)
  # The scenes' pictures are in their cells (not a blank canvas).
  cell = np.asarray(img.convert("RGB"))[:demo.PICTURE, :demo.CELL].reshape(-1, 3)
  assert len(np.unique(cell, axis=0)) > 2
  p = Predictor(workdir, max_new_tokens=NEW_TOKENS)
  scenes = demo.scenes(16, SCENES)
  captions = p.caption([s["image"] for s in scenes])
  answers = p.vqa([s["image"] for s in scenes], [s["question"] for s in scenes])
  assert text.count("    caption: ") == SCENES and text.count("    answer: ") == SCENES
  for s, c, a in zip(scenes, captions, answers):
    block = text.split(f"  {s['name']}\n", 1)[1]
    assert block.startswith(f"    caption: {c or '(empty)'}\n    question: {s['question']}\n"
                            f"    answer: {a or '(empty)'}\n")
  saved = json.loads(open(os.path.join(tmp_path, "grid.json")).read())
  assert [(r["caption"], r["answer"]) for r in saved] == list(zip(captions, answers))
  assert f"-m metalm_jax.serve --model_dir={workdir}" in text
  assert "notebooks/evaluate_checkpoint.ipynb" in text and f"MODEL_DIR = {workdir!r}" in text
  assert f"picture grid: {out}" in text


def test_scenes_are_distinct_validation_scenes():
  got = demo.scenes(16, 2)
  assert got[0]["image"] != got[1]["image"]
  assert all(s["question"] and s["references"] for s in got)
