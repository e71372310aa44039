"""The Predictor as a user calls it: raw images of any size and mode (an RGBA
PNG file, grayscale JPEG bytes, a PIL palette image, an odd-sized uint8 array)
get exactly the pixels of the training pipeline; generation runs end to end
without the training stack; prompt lengths are bucketed (compiles counted)
without changing any answer; a training workdir serves like its export.

Tolerances: pixels are compared bit-exactly with the training path; against
the float64 references (white composite, a plain resize + normalisation),
atol 1e-6 on float32 values of size ~5. Generated ids are compared exactly.
"""
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from metalm_jax import params_io
from metalm_jax.data.hf_tokenizer import HfTokenizer
from metalm_jax.convert.predictor import (CAPTION_PROMPT, VQA_TEMPLATE, Predictor,
                                          bucket_length)
from metalm_jax.data import tasks
from metalm_jax.evaluate import decode, prompts
from tests import export_fixtures as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = 16  # the fixture model's image_size
NEW = 4    # max_new_tokens of the in-process tests (one compile per shape)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  return F.exported(tmp_path_factory)


@pytest.fixture(scope="module")
def raw(setup):
  """name -> (what the user passes, what a training record holds, file)."""
  d = setup["tmp"] / "raw"
  d.mkdir(exist_ok=True)
  rng = np.random.default_rng(0)
  rgba = np.zeros((200, 300, 4), np.uint8)  # 300 wide, 200 high
  rgba[:, :150, :3] = rng.integers(0, 256, (200, 150, 3))
  rgba[:, :150, 3] = 255
  rgba[:, 150:] = (0, 255, 0, 0)  # transparent green: must become white
  Image.fromarray(rgba, "RGBA").save(d / "rgba.png")
  buf = io.BytesIO()
  Image.fromarray(rng.integers(0, 256, (45, 61), dtype=np.uint8), "L").save(buf, "JPEG")
  (d / "gray.jpg").write_bytes(buf.getvalue())
  pal = Image.fromarray(rng.integers(0, 256, (20, 33, 3), dtype=np.uint8)).quantize(16)
  pal.save(d / "palette.png")
  arr = rng.integers(0, 256, (23, 37, 3), dtype=np.uint8)
  np.save(d / "odd.npy", arr)
  return {
      "rgba_png_path": (str(d / "rgba.png"), (d / "rgba.png").read_bytes()),
      "gray_jpeg_bytes": (buf.getvalue(), buf.getvalue()),
      "pil_palette": (Image.open(d / "palette.png"), (d / "palette.png").read_bytes()),
      "odd_uint8_array": (arr, arr),
  }


def _training_pixels(setup, record_image):
  """The pixels the training pipeline's caption task puts in its row."""
  ctx = tasks.Context(tokenizer=HfTokenizer(setup["tok_path"]), model_cfg=setup["cfg"],
                      seq_len=F.SEQ_LEN, vision="vision", text="", prefix_max=0, span_min=1,
                      span_max=1, span_ratio=0.0, max_doc_tokens=16, image_mean=F.MEAN,
                      image_std=F.STD)
  out = tasks.TASKS.get("caption")(ctx, {"image": record_image, "captions": ["a red cat"]},
                                   np.random.default_rng(0), tasks.new_stats())
  assert out["ok"]
  return out["row"]["encoders"]["vision"]["pixels"][0]


def _norm64(rgb):
  return (np.asarray(rgb, np.float64) / 255.0 - np.array(F.MEAN)) / np.array(F.STD)


def test_raw_images_get_the_training_pixels(setup, raw):
  p = Predictor(setup["out"])
  assert (p.image_mean, p.image_std) == (F.MEAN, F.STD)  # from the export's config.json
  got = {}
  for name, (user, record) in raw.items():
    got[name] = p.preprocess(user)
    assert got[name].shape == (SIZE, SIZE, 3) and got[name].dtype == np.float32, name
    np.testing.assert_array_equal(got[name], _training_pixels(setup, record), err_msg=name)
  # RGBA: the transparent right part is white (not the green under it).
  np.testing.assert_allclose(got["rgba_png_path"][:, 12:], np.broadcast_to(
      _norm64([255, 255, 255]), (SIZE, 4, 3)), atol=1e-6)
  # Grayscale: three equal channels once de-normalised.
  rgb = got["gray_jpeg_bytes"] * np.array(F.STD) + np.array(F.MEAN)
  np.testing.assert_allclose(rgb[..., 0], rgb[..., 1], atol=1e-6)
  np.testing.assert_allclose(rgb[..., 0], rgb[..., 2], atol=1e-6)
  arr = raw["odd_uint8_array"][0]
  resized = Image.fromarray(arr).resize((SIZE, SIZE), Image.Resampling.BICUBIC)
  np.testing.assert_allclose(got["odd_uint8_array"], _norm64(resized), atol=1e-6)
  # The same pixels as float in [0, 1] give the same input.
  np.testing.assert_array_equal(p.preprocess(arr / 255.0), got["odd_uint8_array"])


def test_bad_input_is_refused_by_name(setup, tmp_path):
  p = Predictor(setup["out"])
  ok = np.zeros((8, 8, 3), np.uint8)
  normalised = np.random.default_rng(0).standard_normal((8, 8, 3)).astype(np.float32)
  with pytest.raises(ValueError, match=r"^images\[1\]: pixel values span \[-.*not normalised"):
    p.caption([ok, normalised])
  with pytest.raises(ValueError, match=r"^images\[0\]: cannot be decoded as an image \(bytes\)"):
    p.caption([b"\x89PNG not really"])
  with pytest.raises(FileNotFoundError, match=r"^images\[0\]: image file .*nope.png"):
    p.caption([str(tmp_path / "nope.png")])
  with pytest.raises(ValueError, match=r"^images\[0\]: array of dtype bool"):
    p.caption([np.ones((8, 8), bool)])
  with pytest.raises(ValueError, match=r"^images\[0\]: array of shape \(8, 8, 5\)"):
    p.caption([np.ones((8, 8, 5), np.uint8)])
  with pytest.raises(TypeError, match="wrap a single image in a list"):
    p.caption(ok)
  with pytest.raises(ValueError, match="2 images but 1 questions"):
    p.vqa([ok, ok], ["what is this ?"])
  with pytest.raises(FileNotFoundError, match="neither an export dir"):
    Predictor(str(tmp_path))
  with pytest.raises(ValueError, match=r"longer than every bucket \(buckets=\[8\]\)"):
    bucket_length(9, (8,))
  assert p.caption([]) == []


def _questions(n):
  words = "what is the colour of the cat on the red mat a dog blue this image".split()
  qs = [" ".join(words[:k + 1] + ["?"] * (k + 1 - len(words))) for k in range(n)]  # k+1 tokens
  return [qs[i] for i in np.random.default_rng(2).permutation(n)]  # unsorted lengths


def test_buckets_compile_once_per_bucket_and_change_no_answer(setup):
  p = Predictor(setup["out"], max_new_tokens=NEW, batch_size=4)
  tok, cfg = p.tokenizer, p.model_cfg
  rng = np.random.default_rng(1)
  imgs = [rng.integers(0, 256, (20 + i, 30 - i, 3), dtype=np.uint8) for i in range(20)]
  qs = _questions(20)
  parts = [[prompts.Image(p.preprocess(im)), prompts.Text(VQA_TEMPLATE.format(question=q))]
           for im, q in zip(imgs, qs)]
  lengths = prompts.prompt_lengths(parts, tok, cfg)
  assert len(set(lengths)) == 20  # unbucketed: a new shape per question
  buckets = {bucket_length(n) for n in lengths}
  assert buckets == {16, 32}

  before = decode.trace_count("greedy")
  ids = p.generate_ids(parts)
  answers = p.vqa(imgs, qs)
  assert decode.trace_count("greedy") - before <= len(buckets)
  assert answers == [tok.decode(x).strip() for x in ids]
  # More questions of new lengths within the buckets compile nothing new.
  before = decode.trace_count("greedy")
  p.vqa(imgs[:3], ["is this a cat ?", "what is on the mat ?", "colour ?"])
  assert decode.trace_count("greedy") == before

  # Each prompt decoded alone at its own length (no padding) gives the same
  # ids: the shortest (3 pads in bucket 16) and the most padded of bucket 32.
  for i in (int(np.argmin(lengths)), lengths.index(17)):
    res = decode.greedy(p.model, p.params, prompts.build_batch([parts[i]], tok, cfg),
                        max_new_tokens=NEW, eos_id=tok.eos, pad_id=tok.pad)
    alone = np.asarray(res.ids)[0, :int(res.lengths[0])].tolist()
    assert ids[i] == alone, (i, lengths[i])
    assert alone  # something was generated to compare


def test_workdir_serves_like_its_export(setup, raw):
  workdir = F.write_workdir(setup, str(setup["tmp"] / "run"))
  pw = Predictor(workdir, max_new_tokens=NEW, batch_size=4)
  pe = Predictor(setup["out"], max_new_tokens=NEW, batch_size=4)
  assert (pw.image_mean, pw.image_std) == (F.MEAN, F.STD)  # from the run config
  a, b = params_io.flatten(setup["params"]), params_io.flatten(pw.params)
  assert a.keys() == b.keys()
  for k in a:  # the latest step (7), not step 3
    np.testing.assert_array_equal(a[k], np.asarray(b[k]), err_msg=k)
  early = params_io.flatten(Predictor(workdir, step=3).params)
  np.testing.assert_array_equal(np.asarray(early["decoder/final_norm/scale"]),
                                a["decoder/final_norm/scale"] + 1.0)
  imgs = [user for user, _ in raw.values()]
  caps = pw.caption(imgs)
  assert caps == pe.caption(imgs) and len(caps) == 4 and all(isinstance(c, str) for c in caps)


PREDICT_SCRIPT = """
import json, sys
import numpy as np
from PIL import Image
sys.path.insert(0, {root!r})
from metalm_jax.convert.predictor import Predictor
d = {raw!r}
p = Predictor({out!r}, max_new_tokens=6)
imgs = [d + "/rgba.png", open(d + "/gray.jpg", "rb").read(), Image.open(d + "/palette.png"),
        np.load(d + "/odd.npy")]
caps = p.caption(imgs)
ans = p.vqa(imgs[:2], ["what colour is the cat ?", "is this a dog ?"])
heavy = sorted(m for m in ("optax", "orbax", "grain", "tensorflow") if m in sys.modules)
print(json.dumps(dict(caps=caps, ans=ans, heavy=heavy)))
"""


@pytest.mark.integration
def test_predictor_on_raw_images_without_training_stack(setup, raw):
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
  script = PREDICT_SCRIPT.format(root=ROOT, out=setup["out"], raw=str(setup["tmp"] / "raw"))
  res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                       timeout=300)
  assert res.returncode == 0, res.stderr[-3000:]
  got = json.loads(res.stdout.strip().splitlines()[-1])
  assert got["heavy"] == []
  tok = HfTokenizer(setup["tok_path"])
  pixels = [_training_pixels(setup, record) for _, record in raw.values()]
  qs = ["what colour is the cat ?", "is this a dog ?"]
  for texts, px, key in ([[CAPTION_PROMPT] * 4, pixels, "caps"],
                         [[VQA_TEMPLATE.format(question=q) for q in qs], pixels[:2], "ans"]):
    rows = [[prompts.Image(x), prompts.Text(t)] for x, t in zip(px, texts)]
    batch = prompts.build_batch(rows, tok, setup["cfg"])
    ref = F.greedy_full_forward(setup["model"], setup["params"], batch, 6, tok.eos)
    assert got[key] == [tok.decode(r).strip() for r in ref], key
    assert all(len(r) > 0 for r in ref)  # something was generated to compare
