"""A test helper (not a test module): a folder of test-written images with
JSONL manifests holding good lines and each kind of bad line
(docs/your-data.md), for tests/test_data_jsonl.py and
tests/test_main_your_data.py."""
import json

import ml_collections as mlc
from PIL import Image

GOOD = [  # (line, kinds it gives)
    ({"image": "img/0.png", "caption": "a red square.", "source": "web", "licence": 3},
     ["caption"]),
    ({"image": "img/1.png", "question": "what color is it?", "answers": ["green", "green"]},
     ["vqa"]),
    ({"text": "A first paragraph.\n\nA second one."}, ["text"]),
    ({"image": "img/2.png", "captions": ["a blue square.", "blue."], "question": "what color?",
      "answers": ["blue"], "key": "both"}, ["caption", "vqa"]),
]
BAD = [  # (line, reason) in file order after GOOD; line numbers 5.. in train.jsonl
    ("{not json", "malformed_json"),
    ({"image": "img/missing.png", "caption": "gone."}, "missing_medium"),
    ({"image": "img", "caption": "a folder."}, "unreadable_medium"),
    ({"image": "img/bad.png", "caption": "not an image."}, "undecodable_image"),
    ({"image": "img/3.png"}, "missing_target"),
    ({"caption": "a caption without a medium."}, "missing_target"),
    ({"image": "img/3.png", "caption": "  "}, "empty_target"),
    ({"image": "img/3.png", "question": "what?", "answers": []}, "empty_target"),
    ({"image": "img/3.png", "caption": 5}, "wrong_type"),
    ({"image": "img/3.png", "question": "what?", "answers": "red"}, "wrong_type"),
    ({"image": "img/3.png", "audio": "a.wav", "caption": "two media."}, "several_media"),
    ({"image": "img/3.png", "caption": "first of its key.", "key": 7}, None),  # good
    ({"image": "img/4.png", "caption": "second of its key.", "key": "7"}, "duplicate_key"),
    ("[1, 2]", "malformed_json"),
]
COLORS = [(220, 30, 30), (30, 200, 30), (30, 30, 220), (200, 200, 30), (200, 30, 200)]


def line(obj) -> str:
  return obj if isinstance(obj, str) else json.dumps(obj)


def write_folder(root, n_train=0, n_val=4):
  """FOLDER with img/, train.jsonl (GOOD, BAD, then `n_train` more captions)
  and validation.jsonl (`n_val` captions); returns FOLDER."""
  (root / "img").mkdir(parents=True)
  for i, c in enumerate(COLORS):
    Image.new("RGB", (24, 24), c).save(root / "img" / f"{i}.png")
  (root / "img" / "bad.png").write_bytes(b"\x89PNG not really")
  lines = [line(obj) for obj, _ in GOOD + BAD]
  lines += [line({"image": f"img/{i % 5}.png", "caption": f"color number {i % 5}."})
            for i in range(n_train)]
  (root / "train.jsonl").write_text("\n".join(lines) + "\n\n")  # a blank line is no line
  (root / "validation.jsonl").write_text("".join(
      line({"image": f"{root}/img/{i % 5}.png", "caption": f"color number {i % 5}."}) + "\n"
      for i in range(n_val)))
  return root


def data_cfg(data_dir):
  return mlc.ConfigDict(dict(data_dir=str(data_dir), world="test", manual_dirs={}))
