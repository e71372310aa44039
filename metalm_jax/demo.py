"""What a run learned: a few validation scenes of the embedded world
captioned and asked a question by the trained model.

    python -m metalm_jax.demo --workdir=workdir_local_vl [--num_scenes=4 --max_new_tokens=16]

Serves the workdir as a user would (convert/predictor.py `Predictor`: the
params of its latest checkpoint and the tokenizer copied into it; the
evaluation prompts "Summarize this image:" and "question: ... answer:"),
on validation scenes the run never trained on (data/world.py
`scene_record`, seed 0 as the built world). Writes WORKDIR/demo.png (a grid:
each scene's picture with the caption, the question, the answer and the
scene's reference answers below it) and WORKDIR/demo.json (the same text;
beside --out when given), prints the same text, then the commands that
serve the run and open the notebook on it.
"""
from __future__ import annotations

import io
import os
import sys
import textwrap
from typing import Any, Dict, List, Optional

from absl import flags
from absl import logging

from metalm_jax import absl_run, storage
from metalm_jax.data import world

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "training workdir (config.json + checkpoints/) or export dir")
flags.DEFINE_integer("num_scenes", 4, "validation scenes to show")
flags.DEFINE_integer("max_new_tokens", 16, "generated tokens per caption / answer")
flags.DEFINE_string("out", None, "the PNG grid (default WORKDIR/demo.png)")
flags.mark_flag_as_required("workdir")

CELL = 256       # grid cell width, px
PICTURE = 192    # picture side in a cell, px
TEXT_HEIGHT = 150
WRAP = 40        # characters per text line


def scenes(image_size: int, num: int) -> List[Dict[str, Any]]:
  """The first `num` validation scenes: {name, image (PNG bytes), question, references}."""
  out = []
  for i in range(num):
    s = world.scene_record(0, "validation", i, image_size, doc_paragraphs=1)
    out.append(dict(name=f"validation scene {i}", image=s["image"], question=s["questions"][0],
                    references=sorted(set(str(a) for a in s["answers"][0]))))
  return out


def image_size(model_cfg) -> int:
  vits = [e for e in model_cfg.encoders.values() if e.get("type") == "vit"]
  if not vits:
    raise ValueError("the model has no image encoder (type 'vit'): nothing to show")
  return int(vits[0]["image_size"])


def run(model_dir: str, num_scenes: int = 4, max_new_tokens: int = 16) -> List[Dict[str, Any]]:
  """Captions and answers of the model of `model_dir` on the first
  `num_scenes` validation scenes: [{name, image, caption, question, answer, references}]."""
  from metalm_jax.convert.predictor import Predictor
  p = Predictor(model_dir, max_new_tokens=max_new_tokens)
  items = scenes(image_size(p.model_cfg), num_scenes)
  images = [it["image"] for it in items]
  captions = p.caption(images)
  answers = p.vqa(images, [it["question"] for it in items])
  return [dict(it, caption=c, answer=a) for it, c, a in zip(items, captions, answers)]


def lines_of(item: Dict[str, Any]) -> List[str]:
  return [f"caption: {item['caption'] or '(empty)'}", f"question: {item['question']}",
          f"answer: {item['answer'] or '(empty)'}",
          f"references: {', '.join(item['references'])}"]


def grid(items: List[Dict[str, Any]]):
  """A PIL image: one cell per scene, the picture above its text."""
  from PIL import Image, ImageDraw, ImageFont
  font = ImageFont.load_default()
  out = Image.new("RGB", (CELL * len(items), PICTURE + 8 + TEXT_HEIGHT), "white")
  draw = ImageDraw.Draw(out)
  for k, it in enumerate(items):
    x = k * CELL
    pic = Image.open(io.BytesIO(it["image"])).convert("RGB").resize((PICTURE, PICTURE),
                                                                   Image.NEAREST)
    out.paste(pic, (x + (CELL - PICTURE) // 2, 0))
    text = "\n".join(textwrap.fill(line, WRAP) for line in lines_of(it))
    draw.multiline_text((x + 6, PICTURE + 8), text, fill="black", font=font, spacing=2)
  return out


def commands(model_dir: str) -> List[str]:
  """One-line commands that serve the run and open the notebook on it."""
  py = sys.executable
  return [f"serve it:     {py} -m metalm_jax.serve --model_dir={model_dir}   "
          "(pip install -e '.[serve]')",
          f"notebook:     {py} -m jupyter notebook notebooks/evaluate_checkpoint.ipynb   "
          f"(pip install -e '.[notebook]' notebook; set MODEL_DIR = {model_dir!r})"]


def show(model_dir: str, num_scenes: int = 4, max_new_tokens: int = 16,
         out: Optional[str] = None) -> List[Dict[str, Any]]:
  """Runs the model of `model_dir` on the scenes (`run`), writes the grid to
  `out` (default MODEL_DIR/demo.png) and the text beside it (.json), prints
  the text and the commands; returns the items."""
  items = run(model_dir, num_scenes, max_new_tokens)
  out = out or storage.join(model_dir, "demo.png")
  buf = io.BytesIO()
  grid(items).save(buf, "PNG")
  storage.write_bytes(out, buf.getvalue())
  storage.write_json(os.path.splitext(str(out))[0] + ".json",
                     [{k: v for k, v in it.items() if k != "image"} for it in items])
  print(f"\n[demo] what the model says about {len(items)} validation scenes it never trained on:")
  for it in items:
    print(f"  {it['name']}")
    for line in lines_of(it):
      print(f"    {line}")
  print(f"  picture grid: {out}")
  for line in commands(model_dir):
    print(f"  {line}")
  return items


def main(argv):
  if len(argv) > 1:
    raise ValueError(f"unexpected arguments: {argv[1:]}")
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.ERROR)  # Orbax's restore notes and warnings
  show(FLAGS.workdir, FLAGS.num_scenes, FLAGS.max_new_tokens, FLAGS.out)


if __name__ == "__main__":
  absl_run.run(main)
