"""The server under load and at shutdown, with the official `openai` client
and raw HTTP on 127.0.0.1: a full queue answers 503 with Retry-After and an
OpenAI error body; a request not answered within the request timeout is a
504 (a queued one is then never decoded); SIGTERM finishes every request in
flight, the queued ones included, with the right answers, then the server
exits 0 and takes no more connections.

The first request of a fresh server compiles its decoding loop (seconds on
CPU), which holds the batcher long enough for the others to queue.
"""
import concurrent.futures
import time
import urllib.error

import openai
import pytest

from metalm_jax.convert.predictor import Predictor
from tests import serve_fixtures as S

pytestmark = pytest.mark.integration

NEW = 5


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  return S.serve_export(tmp_path_factory)


def _body(i: int) -> dict:
  return dict(model=S.MODEL, max_tokens=NEW, temperature=0,
              messages=[{"role": "user", "content": [
                  {"type": "image_url", "image_url": {"url": S.png_url(i)}},
                  {"type": "text", "text": "Summarize this image:"}]}])


def _ask(client, i):
  """The answer, or the openai client's error for a refused request."""
  try:
    return client.chat.completions.create(**_body(i)).choices[0].message.content
  except openai.APIStatusError as e:
    return e


def test_full_queue_is_503_with_retry_after_and_slow_requests_time_out(built, tmp_path):
  s = S.Server(built["out"], "--max_batch=1", "--max_queue=1", "--batch_wait_ms=0",
               "--request_timeout_s=1", log_path=str(tmp_path / "server.log"))
  try:
    client = s.client()
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
      first = pool.submit(_ask, client, 0)
      time.sleep(0.3)  # the first one is compiling in the batcher
      rest = list(pool.map(lambda i: _ask(client, i), range(1, 6)))
    assert all(isinstance(r, openai.APIStatusError) for r in rest), rest
    statuses = sorted(r.status_code for r in rest)
    assert statuses == [503] * 4 + [504], statuses  # one queued (then timed out), four refused
    for e in rest:
      assert set(e.body) == {"message", "type", "param", "code"}, e.body
      if e.status_code == 503:
        assert e.response.headers["retry-after"] == "1"
        assert e.body["code"] == "queue_full" and e.body["type"] == "server_busy"
      else:
        assert e.body["code"] == "timeout"
    # Compiling took more than the 1 s timeout: the first one timed out too.
    assert first.result().status_code == 504
    # Once the first batch is done (compiled), requests are answered within
    # the timeout; the server decoded the first request (its answer dropped)
    # but never the queued one.
    deadline = time.monotonic() + 60
    while S.get(s.url + "/health")[1]["batches"] < 1 and time.monotonic() < deadline:
      time.sleep(0.2)
    status, _, body = S.post(s.url + "/v1/chat/completions", _body(0))
    assert status == 200, body
    health = S.get(s.url + "/health")[1]
    assert health["requests"] == 2 and health["largest_batch"] == 1 and health["queued"] == 0
  finally:
    s.close()


def test_sigterm_answers_the_requests_in_flight_then_exits(built, tmp_path):
  p = Predictor(built["out"], max_new_tokens=NEW)
  want = p.caption([S.png_bytes(S.png_url(i)) for i in range(5)])
  s = S.Server(built["out"], "--max_batch=2", "--batch_wait_ms=0",
               log_path=str(tmp_path / "server.log"))
  try:
    client = s.client()
    ask = lambda i: client.chat.completions.create(**_body(i)).choices[0].message.content
    with concurrent.futures.ThreadPoolExecutor(5) as pool:
      futures = [pool.submit(ask, i) for i in range(5)]
      time.sleep(0.5)  # all five sent; the first batch is compiling, the others queued
      assert S.get(s.url + "/health")[1]["batches"] == 0
      t = time.monotonic()
      assert s.terminate() == 0, s.log()[-3000:]
      got = [f.result() for f in futures]
    assert got == want
    assert "drained: " in s.log() and "5 requests answered" in s.log(), s.log()[-3000:]
    assert time.monotonic() - t < 60
    with pytest.raises(urllib.error.URLError):
      S.get(s.url + "/health")
  finally:
    s.close()
