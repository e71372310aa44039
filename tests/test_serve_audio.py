"""input_audio through the server with the official `openai` client on
127.0.0.1, for a model with an audio ("whisper") encoder and no vision
encoder: a base64 WAV clip and the audio caption prompt get the Predictor's
caption of the same bytes (greedy); bytes that are no audio, and an image
for this model without a vision encoder, are 400s naming the field."""
import base64

import openai
import pytest

from metalm_jax.convert.predictor import Predictor
from metalm_jax.data import formats
from tests import media_fixtures as mf
from tests import serve_fixtures as S

pytestmark = pytest.mark.integration

NEW = 6


def _chat(client, part, text):
  return client.chat.completions.create(
      model=S.MODEL, max_tokens=NEW, temperature=0,
      messages=[{"role": "user", "content": [part, {"type": "text", "text": text}]}])


def test_input_audio_answers_like_the_predictor(tmp_path):
  out = S.audio_export(tmp_path)
  prompt = formats.FORMATS.get("audio_caption").eval_template()
  clips = [mf.audio_bytes(mf.sine(f, 44100, 0.4), 44100) for f in (300, 1000)]
  want = Predictor(out, max_new_tokens=NEW).caption(clips, kind="audio")
  assert all(want)  # words, not empty strings
  s = S.Server(out, log_path=str(tmp_path / "server.log"))
  try:
    client = s.client()
    for clip, answer in zip(clips, want):
      part = {"type": "input_audio",
              "input_audio": {"data": base64.b64encode(clip).decode(), "format": "wav"}}
      assert _chat(client, part, prompt).choices[0].message.content == answer
    bad = {"type": "input_audio", "input_audio": {"data": base64.b64encode(
        b"RIFF not a wave").decode(), "format": "wav"}}
    with pytest.raises(openai.BadRequestError) as e:
      _chat(client, bad, prompt)
    assert e.value.body["param"] == "messages[0].content[0].input_audio.data"
    assert e.value.body["code"] == "invalid_audio"
    image = {"type": "image_url", "image_url": {"url": S.png_url(0)}}
    with pytest.raises(openai.BadRequestError) as e:
      _chat(client, image, prompt)
    assert e.value.body["param"] == "messages[0].content[0].image_url.url"
    assert e.value.body["code"] == "unsupported_content"
  finally:
    assert s.terminate() == 0, s.log()[-3000:]
