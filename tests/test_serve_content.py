"""The server's pure parts without a server: image sources (data: URLs only
by default; remote URLs always refused; local files only under the allowed
root, symlinks out of it included), size limits before decoding, the answer
text (the Predictor's decode + strip, cut at the earliest stop sequence,
counting the tokens up to it), stream pieces that add up to the answer, the
sampling checks, pydantic locations as OpenAI `param` paths, the decode step
bucket, and the extra a missing fastapi names."""
import base64
import os
import sys

import ml_collections
import pytest

from metalm_jax.serve import __main__ as serve_main
from metalm_jax.serve import answers, batcher, content, schemas
from metalm_jax.serve.errors import ApiError, param_path


class WordTokenizer:
  """Ids are indices into WORDS; id 0 decodes to nothing (a special token)."""
  WORDS = ["", "a", "red", "cat", "on", "the", "mat"]

  def decode(self, ids):
    return " ".join(self.WORDS[i] for i in ids if self.WORDS[i])


def _refused(fn, *args, code):
  with pytest.raises(ApiError) as e:
    fn(*args)
  assert e.value.code == code and e.value.status == 400, e.value.body()
  assert e.value.param == "img" and e.value.message.startswith("img"), e.value.body()
  return e.value


def test_image_sources_and_limits(tmp_path):
  raw = b"\x89PNG some bytes"
  url = "data:image/png;base64," + base64.b64encode(raw).decode()
  limits = content.Limits(max_image_bytes=len(raw))
  assert content.image_bytes(url, "img", limits) == raw
  _refused(content.image_bytes, url, "img", content.Limits(max_image_bytes=len(raw) - 1),
           code="too_large")
  huge = "data:image/png;base64," + "A" * 4_000_000
  _refused(content.image_bytes, huge, "img", limits, code="too_large")  # before decoding
  _refused(content.image_bytes, "data:image/png;base64,ab$c", "img", limits,
           code="invalid_base64")
  _refused(content.image_bytes, "data:image/png,plain", "img", limits, code="invalid_data_url")
  for remote in ("http://x/cat.png", "https://x/cat.png", "gs://b/cat.png", "ftp://x/y"):
    _refused(content.image_bytes, remote, "img", limits, code="remote_url_refused")

  root = tmp_path / "allowed"
  root.mkdir()
  (root / "cat.png").write_bytes(raw)
  (tmp_path / "secret.png").write_bytes(raw)
  os.symlink(tmp_path / "secret.png", root / "link.png")
  _refused(content.image_bytes, str(root / "cat.png"), "img", limits,
           code="local_files_refused")
  local = content.Limits(max_image_bytes=len(raw), local_root=str(root))
  assert content.image_bytes(str(root / "cat.png"), "img", local) == raw
  assert content.image_bytes(f"file://{root / 'cat.png'}", "img", local) == raw
  for outside in (str(tmp_path / "secret.png"), str(root / ".." / "secret.png"),
                  str(root / "link.png")):
    _refused(content.image_bytes, outside, "img", local, code="outside_allowed_root")
  _refused(content.image_bytes, str(root / "none.png"), "img", local, code="not_found")


def test_answer_text_stop_sequences_and_stream_pieces():
  tok = WordTokenizer()
  ids = [1, 2, 0, 3, 4, 5, 6]  # "a red cat on the mat" (id 0 decodes to nothing)
  a = answers.answer(tok, ids, "length", [])
  assert (a.text, a.tokens, a.finish) == ("a red cat on the mat", 7, "length")
  assert answers.pieces(tok, a) == ["a", " red", " cat", " on", " the", " mat"]
  a = answers.answer(tok, ids, "length", ["the", "cat"])  # the earliest one cuts
  assert (a.text, a.tokens, a.finish) == ("a red ", 4, "stop")
  assert "".join(answers.pieces(tok, a)) == "a red "
  a = answers.answer(tok, ids, "stop", ["dog"])
  assert (a.text, a.tokens, a.finish) == ("a red cat on the mat", 7, "stop")
  assert answers.pieces(tok, answers.answer(tok, [0, 0], "stop", [])) == []


def test_sampling_checks_name_the_field():
  def check(**kw):
    req = schemas.CompletionRequest(model="m", prompt="p", **kw)
    return schemas.check_sampling(req, max_tokens_limit=32, default_max_tokens=8)
  assert check() == dict(max_tokens=8, temperature=0.0, top_p=1.0, stop=[], seed=None)
  assert check(stop="x", temperature=0.7, seed=3)["stop"] == ["x"]
  for kw, param in [(dict(max_tokens=33), "max_tokens"), (dict(max_tokens=0), "max_tokens"),
                    (dict(temperature=2.5), "temperature"), (dict(top_p=0.0), "top_p"),
                    (dict(top_p=1.5), "top_p"), (dict(n=3), "n"),
                    (dict(stop=["a", "b", "c", "d", "e"]), "stop"), (dict(stop=[""]), "stop")]:
    with pytest.raises(ApiError) as e:
      check(**kw)
    assert e.value.param == param and e.value.body()["error"]["param"] == param
  chat = schemas.ChatRequest(model="m", messages=[], max_completion_tokens=40)
  with pytest.raises(ApiError, match="max_completion_tokens=40"):
    schemas.check_sampling(chat, 32, 8)
  assert param_path(("body", "messages", 0, "content", 1, "image_url")) == \
      "messages[0].content[1].image_url"


def test_decode_steps_bucket_and_room():
  learned = ml_collections.ConfigDict(dict(positions="learned", max_len=48))
  assert batcher.steps_for(5, 10, learned) == 8      # next power of two
  assert batcher.steps_for(5, 43, learned) == 6      # capped by the positions left
  assert batcher.room(43, learned) == 6 and batcher.room(48, learned) == 1
  rotary = ml_collections.ConfigDict(dict(positions="rotary", max_len=48))
  assert batcher.steps_for(33, 40, rotary) == 64 and batcher.room(40, rotary) is None


def test_a_missing_serve_extra_is_named(monkeypatch):
  monkeypatch.setitem(sys.modules, "fastapi", None)  # `import fastapi` fails
  with pytest.raises(ImportError, match=r"metalm_jax\[serve\]"):
    serve_main.main(["--model_dir=unused"])
