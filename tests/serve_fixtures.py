"""Shared helpers for the server tests (no tests here): the tiny export of
tests/export_fixtures.py with the embedding rows of the tokens that decode to
no text zeroed (so greedy answers are words, not empty strings, and answers
can be compared as text), a server subprocess on a free loopback port, PNG
data URLs, and raw HTTP calls."""
import base64
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import numpy as np
from PIL import Image

from metalm_jax.convert import export
from tests import export_fixtures as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = "tiny"   # the --model_name the tests serve under
_BUILT = {}


def words_only(params, keep_ids):
  """params with the (tied) embedding rows of every token but `keep_ids`
  (the words and eos) zeroed: greedy answers are words, not tokens that
  decode to nothing."""
  table = np.array(params["decoder"]["embedder"]["embedding"])
  keep = np.zeros(table.shape[0], bool)
  keep[list(keep_ids)] = True
  table[~keep] = 0.0
  embedder = dict(params["decoder"]["embedder"], embedding=table)
  return dict(params, decoder=dict(params["decoder"], embedder=embedder))


def _word_ids(n_words: int):
  """The ids of the first n_words of F.WORDS and of `</s>`."""
  first = len(F.SPECIALS)
  return list(range(first, first + n_words)) + [F.SPECIALS.index("</s>")]


def serve_export(tmp_path_factory):
  """{out, cfg, tok_path}: the export of the fixture model of
  tests/export_fixtures.py, `words_only`."""
  if not _BUILT:
    setup = F.exported(tmp_path_factory)
    params = words_only(setup["params"], _word_ids(len(F.WORDS)))
    out = str(setup["tmp"] / "serve_export")
    export.export_model(setup["cfg"], params, out, seq_len=F.SEQ_LEN, tokenizer=setup["tok_path"],
                        image_mean=F.MEAN, image_std=F.STD, hf_decoder=False)
    _BUILT.update(out=out, cfg=setup["cfg"], tok_path=setup["tok_path"])
  return _BUILT


AUDIO_SPECIALS = ["<audio>", "</audio>"]
AUDIO_WORDS = ["Describe", "sound", "loud", "quiet", "bird", "rain", "beep"]
AUDIO_RATE, AUDIO_SECONDS = 16000, 0.25


def audio_export(tmp):
  """The export of a tiny decoder with a Whisper-shaped audio encoder (no
  vision encoder), `words_only`."""
  import flax.linen as nn
  import jax
  import ml_collections

  from metalm_jax import presets
  from metalm_jax.models import metalm
  cfg = ml_collections.ConfigDict(dict(
      dtype="float32",
      decoder=presets.decoder(vocab_size=64, num_layers=2, emb_dim=32, num_heads=2, mlp_dim=64,
                              max_len=48, activation="gelu_new"),
      encoders=dict(audio=presets.whisper(
          sample_rate=AUDIO_RATE, max_seconds=AUDIO_SECONDS, num_vectors=3, num_layers=1,
          emb_dim=16, num_heads=2, mlp_dim=32, connector=presets.connector("linear")))))
  model = metalm.build_model(cfg)
  params = jax.tree.map(np.asarray, nn.meta.unbox(
      metalm.init_variables(model, jax.random.key(5))["params"]))
  tok_path = F.tokenizer_file(tmp / "tokenizer.json", AUDIO_SPECIALS, AUDIO_WORDS)
  words = _word_ids(len(F.WORDS))  # then the audio brackets, then AUDIO_WORDS
  start = len(F.SPECIALS) + len(F.WORDS) + len(AUDIO_SPECIALS)
  params = words_only(params, words + list(range(start, start + len(AUDIO_WORDS))))
  out = str(tmp / "export")
  export.export_model(cfg, params, out, seq_len=F.SEQ_LEN, tokenizer=tok_path,
                      image_mean=F.MEAN, image_std=F.STD, hf_decoder=False)
  return out


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def png_url(seed: int, shape=(20, 30)) -> str:
  """A data: URL of a random RGB PNG."""
  arr = np.random.default_rng(seed).integers(0, 256, (*shape, 3), dtype=np.uint8)
  buf = io.BytesIO()
  Image.fromarray(arr).save(buf, "PNG")
  return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def png_bytes(url: str) -> bytes:
  return base64.b64decode(url.split(",", 1)[1])


class Server:
  """`python -m metalm_jax.serve` in a subprocess on 127.0.0.1."""

  def __init__(self, model_dir: str, *flags: str, log_path: str):
    self.port = free_port()
    self.url = f"http://127.0.0.1:{self.port}"
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="", PYTHONPATH=ROOT)
    self.log_path = log_path
    self._log = open(log_path, "w")
    self.proc = subprocess.Popen(
        [sys.executable, "-m", "metalm_jax.serve", f"--model_dir={model_dir}",
         f"--model_name={MODEL}", f"--port={self.port}", "--log_level=warning", *flags],
        stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    self.wait_ready()

  def log(self) -> str:
    with open(self.log_path) as f:
      return f.read()

  def wait_ready(self, timeout: float = 120.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
      if self.proc.poll() is not None:
        raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
      try:
        if get(self.url + "/health")[0] == 200:
          return
      except OSError:
        time.sleep(0.2)
    raise TimeoutError(f"server not ready after {timeout} s:\n{self.log()[-3000:]}")

  def client(self, **kw):
    import openai
    return openai.OpenAI(base_url=self.url + "/v1", api_key="unused", max_retries=0, **kw)

  def terminate(self, timeout: float = 60.0) -> int:
    if self.proc.poll() is None:
      self.proc.send_signal(signal.SIGTERM)
    try:
      return self.proc.wait(timeout)
    finally:
      self._log.close()

  def close(self) -> None:
    if self.proc.poll() is None:
      self.proc.kill()
      self.proc.wait(30)
    self._log.close()


def get(url: str):
  """(status, json body) of a GET."""
  with urllib.request.urlopen(url, timeout=30) as r:
    return r.status, json.loads(r.read())


def post(url: str, body) -> tuple:
  """(status, headers (lower-case names), json body) of a POST; error
  statuses are returned, not raised."""
  data = body if isinstance(body, bytes) else json.dumps(body).encode()
  req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
  try:
    with urllib.request.urlopen(req, timeout=120) as r:
      return r.status, {k.lower(): v for k, v in r.headers.items()}, json.loads(r.read())
  except urllib.error.HTTPError as e:
    return e.code, {k.lower(): v for k, v in e.headers.items()}, json.loads(e.read())
