"""Continuous batching (`--scheduler=continuous`) with the official `openai`
client on 127.0.0.1: requests join a running decode between steps (counted
by /health's joined_mid_decode) and leave at eos or max_tokens, and greedy
answers still equal the Predictor's, for 16 concurrent callers with
different max_tokens; a seed fixes a sampled answer whatever else runs; a
request that cannot fit the cache is refused naming max_tokens; SIGTERM
answers the requests in flight."""
import concurrent.futures
import time

import openai
import pytest

from metalm_jax.convert.predictor import VQA_TEMPLATE, Predictor
from tests import serve_fixtures as S

pytestmark = pytest.mark.integration

QUESTIONS = ["what is the cat ?", "what colour is the mat ?", "is this a dog ?",
             "what is on the mat ?"]


def _vqa(client, url, question, max_tokens, **kw):
  return client.chat.completions.create(
      model=S.MODEL, max_tokens=max_tokens, messages=[{"role": "user", "content": [
          {"type": "image_url", "image_url": {"url": url}},
          {"type": "text", "text": VQA_TEMPLATE.format(question=question)}]}], **kw)


def test_continuous_batching_answers_like_the_predictor(tmp_path_factory, tmp_path):
  built = S.serve_export(tmp_path_factory)
  urls = [S.png_url(200 + i, (18 + i, 30)) for i in range(16)]
  qs = [QUESTIONS[i % len(QUESTIONS)] for i in range(16)]
  lengths = [3 + (i % 4) * 3 for i in range(16)]  # 3, 6, 9, 12 tokens
  p = Predictor(built["out"])
  want = [p.vqa([S.png_bytes(u)], [q], max_new_tokens=n)[0]
          for u, q, n in zip(urls, qs, lengths)]
  assert len(set(want)) > 1
  s = S.Server(built["out"], "--scheduler=continuous", "--max_batch=4", "--batch_wait_ms=0",
               "--cache_len=96", log_path=str(tmp_path / "server.log"))
  try:
    client = s.client()
    assert _vqa(client, urls[0], qs[0], lengths[0]).choices[0].message.content == want[0]
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
      got = list(pool.map(lambda a: _vqa(client, *a).choices[0].message.content,
                          zip(urls, qs, lengths)))
    assert got == want
    health = S.get(s.url + "/health")[1]
    assert health["requests"] == 17 and health["joined_mid_decode"] > 0, health
    assert health["largest_batch"] > 1
    sampled = [_vqa(client, urls[1], qs[1], 8, temperature=1.5, seed=3)
               .choices[0].message.content for _ in range(2)]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:  # now beside other requests
      futures = [pool.submit(_vqa, client, urls[i], qs[i], 12) for i in range(3)]
      sampled.append(_vqa(client, urls[1], qs[1], 8, temperature=1.5, seed=3)
                     .choices[0].message.content)
      [f.result() for f in futures]
    assert sampled[0] == sampled[1] == sampled[2], sampled
    with pytest.raises(openai.BadRequestError) as e:  # 32 + 70 > --cache_len=96
      _vqa(client, urls[0], " ".join(["cat"] * 20), 70)
    assert e.value.body["param"] == "max_tokens"
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
      futures = [pool.submit(_vqa, client, u, q, n) for u, q, n in
                 zip(urls[:6], qs[:6], lengths[:6])]
      time.sleep(0.3)  # sent before the signal
      assert s.terminate() == 0, s.log()[-3000:]
      assert [f.result().choices[0].message.content for f in futures] == want[:6]
  finally:
    s.close()
