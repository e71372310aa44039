"""The OpenAI-compatible server with the official `openai` client on
127.0.0.1: a chat with an image answers exactly what the Predictor answers
for the same image and prompt (greedy, ids compared as the decoded text),
alone and among 16 concurrent callers (which the batcher decodes in fewer
batches than requests); streaming sends the same text as deltas, then
[DONE]; usage counts the prompt's decoder positions; text completions
(streamed too) and stop sequences; a seed fixes a sampled answer; every kind of bad input is a
400 with an OpenAI error body naming the field, and the server keeps serving.
"""
import concurrent.futures
import json
import urllib.request

import openai
import pytest

from metalm_jax.convert.predictor import VQA_TEMPLATE, Predictor
from metalm_jax.evaluate import prompts
from tests import serve_fixtures as S

pytestmark = pytest.mark.integration

NEW = 6  # max_tokens of every request here
QUESTIONS = ["what is the cat ?", "what colour is the mat ?", "is this a dog ?",
             "what is on the mat ?"]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  return S.serve_export(tmp_path_factory)


@pytest.fixture(scope="module")
def server(built, tmp_path_factory):
  log = tmp_path_factory.mktemp("serve_log") / "server.log"
  s = S.Server(built["out"], "--max_batch=8", "--max_images=2", "--max_image_bytes=4000",
               "--max_prompt_tokens=40", log_path=str(log))
  yield s
  assert s.terminate() == 0, s.log()[-3000:]


@pytest.fixture(scope="module")
def predictor(built):
  return Predictor(built["out"], max_new_tokens=NEW)


def _vqa(client, url, question, **kw):
  return client.chat.completions.create(
      model=S.MODEL, max_tokens=NEW, temperature=0, messages=[{"role": "user", "content": [
          {"type": "image_url", "image_url": {"url": url}},
          {"type": "text", "text": VQA_TEMPLATE.format(question=question)}]}], **kw)


def test_models_and_health(server):
  status, body = S.get(server.url + "/v1/models")
  assert status == 200 and [m["id"] for m in body["data"]] == [S.MODEL]
  assert [m.id for m in server.client().models.list()] == [S.MODEL]
  status, body = S.get(server.url + "/health")
  assert status == 200 and body["status"] == "ok" and body["model"] == S.MODEL


def test_chat_with_an_image_answers_like_the_predictor_and_streams(server, predictor):
  client = server.client()
  url, q = S.png_url(0), QUESTIONS[0]
  want, = predictor.vqa([S.png_bytes(url)], [q])
  assert want  # words, not an empty string
  r = _vqa(client, url, q)
  assert r.choices[0].message.content == want
  assert r.choices[0].finish_reason in ("stop", "length") and r.model == S.MODEL
  image = predictor.part(S.png_bytes(url))
  length, = prompts.prompt_lengths([[image, prompts.Text(VQA_TEMPLATE.format(question=q))]],
                                   predictor.tokenizer, predictor.model_cfg)
  ids, = predictor.generate_ids([[image, prompts.Text(VQA_TEMPLATE.format(question=q))]])
  assert r.usage.prompt_tokens == length
  assert r.usage.completion_tokens == len(ids)
  assert r.usage.total_tokens == length + len(ids)

  chunks = list(_vqa(client, url, q, stream=True, stream_options={"include_usage": True}))
  deltas = [c.choices[0].delta.content or "" for c in chunks if c.choices]
  assert chunks[0].choices[0].delta.role == "assistant"
  assert len([d for d in deltas if d]) > 1  # the answer comes in pieces
  assert "".join(deltas) == want
  assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == \
      r.choices[0].finish_reason
  assert chunks[-1].usage.completion_tokens == r.usage.completion_tokens
  # The raw stream is server-sent events ending with [DONE].
  req = urllib.request.Request(server.url + "/v1/chat/completions", data=json.dumps(dict(
      model=S.MODEL, max_tokens=NEW, stream=True,
      messages=[{"role": "user", "content": "what is the"}])).encode(),
      headers={"Content-Type": "application/json"})
  with urllib.request.urlopen(req, timeout=60) as resp:
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    events = [l for l in resp.read().decode().split("\n\n") if l]
  assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"


def test_sixteen_concurrent_callers_get_the_predictors_answers(server, predictor):
  urls = [S.png_url(100 + i, (16 + i, 40 - i)) for i in range(16)]
  qs = [QUESTIONS[i % len(QUESTIONS)] for i in range(16)]
  want = predictor.vqa([S.png_bytes(u) for u in urls], qs)
  assert len(set(want)) > 1  # the inputs give different answers
  before = S.get(server.url + "/health")[1]
  client = server.client()
  with concurrent.futures.ThreadPoolExecutor(16) as pool:
    got = list(pool.map(lambda a: _vqa(client, *a).choices[0].message.content, zip(urls, qs)))
  assert got == want
  after = S.get(server.url + "/health")[1]
  assert after["requests"] - before["requests"] == 16
  assert after["batches"] - before["batches"] < 16  # decoded together
  assert after["largest_batch"] > 1
  # Alone, each is answered the same (one of them, by a fresh request).
  assert _vqa(client, urls[5], qs[5]).choices[0].message.content == want[5]


def test_text_completion_stop_and_seed(server, predictor):
  client = server.client()
  prompt = "question : what is the colour of the cat ? answer :"
  want, = predictor.generate_ids([[prompts.Text(prompt)]])
  text = predictor.tokenizer.decode(want).strip()
  r = client.completions.create(model=S.MODEL, prompt=prompt, max_tokens=NEW, temperature=0)
  assert r.choices[0].text == text and r.usage.completion_tokens == len(want)
  chunks = list(client.completions.create(model=S.MODEL, prompt=prompt, max_tokens=NEW,
                                          stream=True))
  assert "".join(c.choices[0].text for c in chunks) == text
  assert chunks[-1].choices[0].finish_reason == r.choices[0].finish_reason
  words = text.split()
  assert len(words) >= 2
  r = client.completions.create(model=S.MODEL, prompt=prompt, max_tokens=NEW, stop=[words[1]])
  assert r.choices[0].text == text[:text.find(words[1])]
  assert r.choices[0].finish_reason == "stop" and r.usage.completion_tokens == 2
  sampled = [client.completions.create(model=S.MODEL, prompt=prompt, max_tokens=NEW,
                                       temperature=1.5, top_p=0.9, seed=7).choices[0].text
             for _ in range(2)]
  assert sampled[0] == sampled[1]


def _bad_requests(server):
  big = "data:image/png;base64," + "A" * 8000  # 6000 bytes > --max_image_bytes=4000
  chat = lambda content, **kw: dict(model=S.MODEL, messages=[{"role": "user",
                                                              "content": content}], **kw)
  img = lambda url: {"type": "image_url", "image_url": {"url": url}}
  return [
      (chat([img("data:image/png;base64,%%%not base64")]),
       "messages[0].content[0].image_url.url", "invalid_base64"),
      (chat([img("data:image/png;base64,aGVsbG8gd29ybGQ=")]),
       "messages[0].content[0].image_url.url", "invalid_image"),
      (chat([img(big)]), "messages[0].content[0].image_url.url", "too_large"),
      (chat([img(S.png_url(1)), img(S.png_url(2))]),  # the vision encoder's max_items=1
       "messages[0].content[1].image_url.url", "too_many_images"),
      (chat([img("https://example.com/cat.png")]),
       "messages[0].content[0].image_url.url", "remote_url_refused"),
      (chat([img("/etc/hostname")]), "messages[0].content[0].image_url.url",
       "local_files_refused"),
      (chat(" ".join(["cat"] * 60)), "messages", "prompt_too_long"),
      (chat(" ".join(["cat"] * 38), max_tokens=20), "max_tokens",  # 39 of 48 positions
       "context_length_exceeded"),
      (dict(chat("what is"), model="gpt-4o"), "model", "model_not_found"),
      (chat("what is", temperature=-1), "temperature", "invalid_value"),
      (chat("what is", top_p=0), "top_p", "invalid_value"),
      (chat("what is", max_tokens=0), "max_tokens", "invalid_value"),
      (chat("what is", n=2), "n", "unsupported_value"),
      (chat("what is", temperature="hot"), "temperature", "invalid_request"),
      (chat([{"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}]),
       "messages[0].content[0]", "unsupported_content"),
  ]


def test_bad_inputs_are_400s_naming_the_field_and_the_server_keeps_serving(server, predictor):
  for body, param, code in _bad_requests(server):
    status, _, got = S.post(server.url + "/v1/chat/completions", body)
    assert status == 400, (param, got)
    assert set(got["error"]) == {"message", "type", "param", "code"}, got
    assert got["error"]["param"] == param and got["error"]["code"] == code, got
    assert got["error"]["type"] == "invalid_request_error"
    assert param.split("[")[0].split(".")[0] in got["error"]["message"], got
  status, _, got = S.post(server.url + "/v1/chat/completions", b"{not json")
  assert status == 400 and got["error"]["type"] == "invalid_request_error"
  with pytest.raises(openai.BadRequestError) as e:  # the client sees the same body
    server.client().chat.completions.create(model=S.MODEL, messages=[
        {"role": "user", "content": "what"}], top_p=2)
  assert e.value.body["param"] == "top_p"
  # Still serving, and still right.
  url = S.png_url(0)
  want, = predictor.vqa([S.png_bytes(url)], [QUESTIONS[0]])
  assert _vqa(server.client(), url, QUESTIONS[0]).choices[0].message.content == want
