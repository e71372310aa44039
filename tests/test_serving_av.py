"""Sound clips and videos through the Predictor and the export: raw inputs
(files, bytes, arrays) get exactly the training loaders' encoder inputs;
the Predictor's answers on audio equal greedy decoding by full forward passes
of the model; the exported jax.export function run on a batch with audio
equals the model; the export stores the audio / video input constants. The
video cases run once the "video" encoder is registered (metalm_jax/models);
until then they are skipped.

One tiny model (decoder, Whisper-shaped audio encoder, and the video encoder
when registered), exported once for cpu. Tolerances: encoder inputs are
compared bit-exactly with the training path; the exported function vs the
model rel 1e-5 (max|diff| / max|ref|, float32, same ops); ids exactly.
"""
import json
import os

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import pytest

from metalm_jax import presets
from metalm_jax.convert import export, serving
from metalm_jax.data.hf_tokenizer import HfTokenizer
from metalm_jax.convert.predictor import Predictor
from metalm_jax.data import formats, world
from metalm_jax.media import audio, video
from metalm_jax.evaluate import prompts
from metalm_jax.models import metalm, modalities
from tests import export_fixtures as F
from tests import media_fixtures as mf

RATE, SECONDS = 16000, 0.25  # the audio encoder's clips: 4000 samples
SEQ_LEN = 20   # export length = the reference decoder's 16-position bucket + NEW
NEW = 4        # max_new_tokens
AV_SPECIALS = ["<audio>", "</audio>", "<video>", "</video>"]
AV_WORDS = ["Describe", "sound", "video", "how", "many", "sounds", "which", "object", "moved",
            "loud", "circle"]
QUESTIONS = ["how many sounds ?", "which object is loud ?", "what is this ?", "is this a cat ?"]


def model_cfg():
  encoders = dict(audio=presets.whisper(sample_rate=RATE, max_seconds=SECONDS, num_vectors=3,
                                        num_layers=1, emb_dim=16, num_heads=2, mlp_dim=32,
                                        connector=presets.connector("linear")))
  encoders["video"] = presets.video(
      frames=2, num_vectors=2, image_size=16, patch_size=8, num_layers=1, emb_dim=24,
      num_heads=2, mlp_dim=48)
  return ml_collections.ConfigDict(dict(
      dtype="float32",
      decoder=presets.decoder(vocab_size=64, num_layers=2, emb_dim=32, num_heads=2, mlp_dim=64,
                              max_len=48, activation="gelu_new"),
      encoders=encoders))


@pytest.fixture(scope="module")
def av(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("export_av")
  cfg = model_cfg()
  model = metalm.build_model(cfg)
  params = jax.tree.map(np.asarray, nn.meta.unbox(
      metalm.init_variables(model, jax.random.key(5))["params"]))
  tok_path = F.tokenizer_file(tmp / "tokenizer.json", AV_SPECIALS, AV_WORDS)
  out = str(tmp / "export")
  export.export_model(cfg, params, out, seq_len=SEQ_LEN, tokenizer=tok_path, hf_gpt2=False,
                      platforms=("cpu",), image_mean=F.MEAN, image_std=F.STD)
  tone = mf.sine(440, 44100, 0.4)
  (tmp / "stereo44k.wav").write_bytes(mf.audio_bytes(np.stack([tone, 0.5 * tone], 1), 44100))
  clips = {  # what a user passes -> what a training record holds
      "stereo_44k_wav_path": (str(tmp / "stereo44k.wav"), (tmp / "stereo44k.wav").read_bytes()),
      "long_flac_bytes": (mf.audio_bytes(mf.sine(1000, RATE, 1.0), RATE, "FLAC"),) * 2,
      "samples_8k_tuple": ((mf.sine(300, 8000, 0.2, 0.3), 8000),) * 2,
      "float_array": (mf.sine(700, RATE, 0.1, 0.6),) * 2,
  }
  return dict(cfg=cfg, model=model, params=params, out=out, tok=HfTokenizer(tok_path),
              clips=clips, tmp=tmp)


def _train(av, kind, record):
  """The encoder input the training pipeline's loader makes of `record`."""
  enc = av["cfg"].encoders[kind]
  stats = {}
  x = modalities.MODALITIES.get(kind).load(record, enc, (F.MEAN, F.STD), stats)
  assert x is not None, stats
  return x


def test_raw_audio_gets_the_training_waveform(av):
  p = Predictor(av["out"])
  for name, (user, record) in av["clips"].items():
    got = p.preprocess(user, "audio")
    assert got.shape == (4000,) and got.dtype == np.float32, name
    np.testing.assert_array_equal(got, _train(av, "audio", record), err_msg=name)
  arr = av["clips"]["float_array"][0]  # 1600 samples at the encoder's rate: zero-padded
  np.testing.assert_array_equal(p.preprocess(arr, "audio"),
                                np.concatenate([arr, np.zeros(2400)]).astype(np.float32))
  got = p.preprocess(av["clips"]["stereo_44k_wav_path"][0], "audio")  # downmixed, resampled, cut
  np.testing.assert_allclose(got[400:3600], 0.75 * mf.sine(440, RATE, 0.4)[400:3600], atol=2e-3)
  meta = json.load(open(os.path.join(av["out"], "config.json")))
  assert meta["preprocess"]["encoders"]["audio"] == {
      "kind": "audio", "sample_rate": RATE, "max_seconds": SECONDS, "samples": 4000,
      "silence_peak": audio.SILENCE_PEAK, "steps": export.AUDIO_STEPS}


def test_bad_audio_is_refused_by_name(av, tmp_path):
  p = Predictor(av["out"])
  wav = mf.audio_bytes(mf.sine(440, RATE, 0.1), RATE)
  with pytest.raises(ValueError, match=r"^audio\[1\]: cannot be decoded as audio \(bytes\)"):
    p.caption([wav, b"RIFF\x00\x00 not a wav"], kind="audio")
  with pytest.raises(ValueError, match=r"^audio\[0\]: is silent"):
    p.caption([np.zeros(4000)], kind="audio")
  with pytest.raises(ValueError, match=r"^audio\[0\]: array of dtype int16 .* not a waveform"):
    p.caption([np.ones(4000, np.int16)], kind="audio")
  with pytest.raises(FileNotFoundError, match=r"^audio\[0\]: audio file .*nope.wav"):
    p.caption([str(tmp_path / "nope.wav")], kind="audio")
  with pytest.raises(TypeError, match="wrap a single audio in a list"):
    p.caption((np.ones(100), RATE), kind="audio")
  with pytest.raises(ValueError, match="2 audio inputs but 1 questions"):
    p.vqa([wav, wav], ["how many sounds ?"], kind="audio")
  with pytest.raises(ValueError, match="kind='smell' is unknown"):
    p.caption([wav], kind="smell")
  with pytest.raises(ValueError, match="no 'vit' encoder; it cannot read image"):
    p.caption([np.zeros((8, 8, 3), np.uint8)])


def test_predictor_audio_answers_equal_the_model(av):
  """caption / vqa on raw clips = greedy by full forward passes (no KV cache)
  over the training loaders' waveforms, asked with the formats' prompts."""
  p = Predictor(av["out"], max_new_tokens=NEW, batch_size=4)
  tok, cfg = p.tokenizer, av["cfg"]
  users = [u for u, _ in av["clips"].values()]
  waves = [_train(av, "audio", r) for _, r in av["clips"].values()]
  caps = p.caption(users, kind="audio")
  answers = p.vqa(users, QUESTIONS, kind="audio")
  vqa = formats.FORMATS.get("audio_qa").eval_template()
  for texts, got in (([formats.AUDIO_CAPTION_PROMPT] * 4, caps),
                     ([vqa.format(question=q) for q in QUESTIONS], answers)):
    rows = [[prompts.Audio(w), prompts.Text(t)] for w, t in zip(waves, texts)]
    batch = prompts.build_batch(rows, tok, cfg, seq_len=SEQ_LEN - NEW)
    ref = F.greedy_full_forward(av["model"], av["params"], batch, NEW, tok.eos)
    assert got == [tok.decode(r).strip() for r in ref]
    assert all(len(r) > 0 for r in ref)  # something was generated to compare


def test_exported_function_on_audio_equals_the_model(av):
  cfg, tok = av["cfg"], av["tok"]
  waves = [_train(av, "audio", r) for _, r in av["clips"].values()]
  rows = [[prompts.Audio(w), prompts.Text(formats.AUDIO_CAPTION_PROMPT)] for w in waves[:3]]
  rows.append([prompts.Text("what is this ?")])  # a row without a clip
  batch = prompts.build_batch(rows, tok, cfg, seq_len=SEQ_LEN)
  assert batch["encoders"]["audio"]["valid"][:, 0].tolist() == [True, True, True, False]
  fn = serving.load_serving(os.path.join(av["out"], export.SERVING_FILE))
  got = np.asarray(fn.call(av["params"], serving.serving_batch(batch)))
  ref = np.asarray(jax.jit(av["model"].apply)({"params": av["params"]}, batch))[:, -1]
  assert got.shape == (4, 64)
  assert np.abs(got - ref).max() / np.abs(ref).max() <= 1e-5
  silent = dict(batch, encoders=dict(batch["encoders"], audio=dict(
      batch["encoders"]["audio"], waveform=np.zeros_like(batch["encoders"]["audio"]["waveform"]))))
  other = np.asarray(fn.call(av["params"], serving.serving_batch(silent)))
  assert np.abs(other[:3] - got[:3]).max() > 1e-4  # the waveform reaches the logits
  np.testing.assert_array_equal(other[3], got[3])


def test_raw_video_gets_the_training_frames_and_answers_equal_the_model(av):
  p = Predictor(av["out"], max_new_tokens=NEW, batch_size=4)
  tok, cfg = p.tokenizer, av["cfg"]
  mp4 = mf.video_bytes(mf.gray_frames([0, 80, 160, 240]), [0, 100, 200, 300])
  (av["tmp"] / "clip.mp4").write_bytes(mp4)
  pics = [np.full((20, 20, 3), 40 * k, np.uint8) for k in range(3)]
  users = [str(av["tmp"] / "clip.mp4"), mp4, [world.png_bytes(x) for x in pics], np.stack(pics)]
  records = [mp4, mp4, [world.png_bytes(x) for x in pics], [world.png_bytes(x) for x in pics]]
  frames = [_train(av, "video", r) for r in records]
  for user, want in zip(users, frames):
    np.testing.assert_array_equal(p.preprocess(user, "video"), want)
  ref_clip, _ = video.decode_video(mp4, frames=2, image_size=16, mean=F.MEAN, std=F.STD)
  np.testing.assert_array_equal(frames[0], ref_clip)
  with pytest.raises(ValueError, match=r"^video\[0\]\[1\]: pixel values span"):
    p.caption([[pics[0], np.full((4, 4, 3), -1.0)]], kind="video")
  with pytest.raises(ValueError, match=r"^video\[0\]: cannot be decoded as a video"):
    p.caption([b"not a video"], kind="video")
  caps = p.caption(users, kind="video")
  rows = [[prompts.Video(f), prompts.Text(formats.VIDEO_CAPTION_PROMPT)] for f in frames]
  batch = prompts.build_batch(rows, tok, cfg, seq_len=SEQ_LEN - NEW)
  ref = F.greedy_full_forward(av["model"], av["params"], batch, NEW, tok.eos)
  assert caps == [tok.decode(r).strip() for r in ref]
  meta = json.load(open(os.path.join(av["out"], "config.json")))
  assert meta["preprocess"]["encoders"]["video"] == {
      "kind": "video", "frames": 2, "image_size": 16, "steps": export.VIDEO_STEPS}
