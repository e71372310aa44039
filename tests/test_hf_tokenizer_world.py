"""The embedded world through an HF tokenizer.json: a byte-level BPE trained
offline (tokenizers' BpeTrainer) on the world's tokenizer text, GPT-2 style
(`<|endoftext|>` as bos and eos), with the project's specials added
(`add_project_specials`), as `config.data.tokenizer`. World text round-trips;
every world source's rows carry `<s>`, `</s>` / `<eop>` and each docked image,
sound or video between its brackets; every task format's training row equals
its evaluation prompt (tests/eval_fixtures.py); pipeline batches keep the
batch contract."""
import copy

import numpy as np
import pytest

pytest.importorskip("tokenizers")

from metalm_jax import batch as batch_lib  # noqa: E402
from metalm_jax.data import formats, hf_tokenizer, pipeline, prepare, sources, tasks  # noqa: E402
from metalm_jax.data.builders.common import as_str  # noqa: E402
from metalm_jax.data.hf_tokenizer import HfTokenizer  # noqa: E402
from metalm_jax.models import modalities  # noqa: E402
from tests import av_fixtures  # noqa: E402
from tests.eval_fixtures import assert_row_matches_prompt  # noqa: E402
from tests.hf_tokenizer_fixtures import world_bpe  # noqa: E402

# Task formats whose row and evaluation prompt are compared
# (tests/test_formats.py and tests/test_data_pipeline_av.py list the same).
# (each from source world_<format>).
FORMATS = ("caption", "caption_prompted", "caption_instruct", "vqa", "vqa_instruct", "nli",
           "nli_instruct", "nli_encoded", "pair", "audio_caption", "audio_caption_prompted",
           "audio_qa", "audio_image_qa", "video_caption", "video_caption_prompted", "video_qa")
WORLD_SOURCES = sorted(n for n in sources.SOURCES if sources.SOURCES.get(n).embedded)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
  """The four-modality test config with the HF tokenizer (decoder and text
  encoder vocabulary = its size)."""
  cfg = av_fixtures.av_test_config(str(tmp_path_factory.mktemp("tfds")), seq_len=160)
  tmp = tmp_path_factory.mktemp("tok")
  raw = world_bpe(cfg.data, str(tmp / "raw.json"))
  added = hf_tokenizer.add_project_specials(str(tmp / "raw.json"), str(tmp / "tokenizer.json"))
  assert added.old_size == raw.get_vocab_size() and len(added.tokens) == 7
  cfg.data.tokenizer = str(tmp / "tokenizer.json")
  cfg.model.decoder.vocab_size = cfg.model.encoders.text.vocab_size = added.new_size
  cfg.model.encoders.vision.max_items = 5  # binding episodes: four demonstrations and a query
  cfg.model.encoders.text.max_items = 5
  tok = prepare.load_tokenizer(cfg)
  assert isinstance(tok, HfTokenizer) and tok.bos == tok.eod == raw.token_to_id("<|endoftext|>")
  return cfg, tok


def _world_texts(data_cfg, n=40):
  """Sentences of the world's records (every text field) and the prompt vocabulary."""
  recs = prepare.world_records(data_cfg, "train")
  out = list(formats.prompt_vocabulary())
  out += [prepare.capitalised(t) for t in out]
  for i in range(n):
    r = recs[i]
    for field in ("captions", "questions", "audio_captions", "video_captions"):
      out += [as_str(t) for t in r[field]]
    out += [as_str(a) for a in r["answers"].reshape(-1)]
    out += [as_str(r["premise"]), as_str(r["hypothesis"]), as_str(r["document"])]
  return out


def test_world_text_round_trips(world):
  cfg, tok = world
  texts = _world_texts(cfg.data)
  assert len(texts) > 400
  for text in texts:
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert not set(ids) & tok.special_ids, text
  for role in ("eop", "image_start", "image_end", "audio_start", "audio_end", "video_start",
               "video_end"):
    piece = hf_tokenizer.PROJECT_SPECIALS[role]
    i = getattr(tok, role)
    assert tok.encode(piece) == [i] and tok.id_to_piece(i) == piece


def _runs(mask):
  """[(start, length)] of True runs."""
  d = np.diff(np.r_[0, mask.astype(int), 0])
  starts, ends = np.flatnonzero(d == 1), np.flatnonzero(d == -1)
  return list(zip(starts, ends - starts))


def _check_row(tokens, dock_mask, dock_index, segment_ids, model_cfg, tok):
  """Each segment starts with <s>; every docked image / clip / video item is
  one whole slot between its brackets. Returns the media kinds docked."""
  offsets = batch_lib.dock_offsets(model_cfg.encoders)
  kinds = set()
  for s in np.unique(segment_ids[segment_ids > 0]):
    assert tokens[np.flatnonzero(segment_ids == s)[0]] == tok.bos
  for name, enc in model_cfg.encoders.items():
    m = modalities.by_encoder_type(enc.type)
    if not m.docks_whole_items:
      continue
    t = batch_lib.slot_length(enc)
    lo, hi = offsets[name], offsets[name] + enc.max_items * t
    mine = dock_mask & (dock_index >= lo) & (dock_index < hi)
    start, end = modalities.brackets(tok, m.name)
    for first, length in _runs(mine):
      assert length % t == 0
      for k in range(length // t):  # adjacent items would lack their brackets
        pos = first + k * t
        assert tokens[pos - 1] == start and tokens[pos + t] == end, (name, pos)
      kinds.add(m.name)
  return kinds


def test_rows_of_every_world_source(world):
  """Rows (and text documents) of every source of the embedded world."""
  cfg, tok = world
  ctx = pipeline.make_context(cfg, tok)
  seen, eops = set(), 0
  for name in WORLD_SOURCES:
    src = sources.SOURCES.get(name)
    recs = pipeline.data_source(cfg.data, name, "train")
    for i in range(3):
      rng = np.random.default_rng([0, i])
      stats = tasks.new_stats()
      fields = src.extract(recs[i], rng)
      out = tasks.TASKS.get(src.task)(ctx, fields, rng, stats)
      assert out["ok"], (name, {k: int(v) for k, v in stats.items() if v})
      if "sentences" in out:  # a text document: paragraphs end with <eop>, the last with </s>
        assert stats["truncated_text"] == 0
        ends = [int(s[-1]) for s in out["sentences"]]
        assert ends[-1] == tok.eod and tok.eod not in ends[:-1], name
        assert ends.count(tok.eop) == len(tasks.split_sentences(fields["text"])) - 1, name
        eops += ends.count(tok.eop)
        continue
      row = out["row"]
      seen |= _check_row(row["tokens"], row["dock_mask"], row["dock_index"], row["segment_ids"],
                         cfg.model, tok)
  assert seen == {"image", "audio", "video"} and eops > 0


@pytest.mark.parametrize("name", FORMATS)
def test_training_rows_and_evaluation_prompts_agree(world, name):
  cfg, tok = world
  src = sources.SOURCES.get(f"world_{name}")
  assert src.task == name
  recs = pipeline.data_source(cfg.data, f"world_{name}", "train")
  for i in range(2):
    fields = src.extract(recs[i], np.random.default_rng([0, 0, i]))
    assert_row_matches_prompt(cfg, tok, name, fields, i)


def test_pipeline_batches(world):
  cfg, tok = world
  cfg = copy.deepcopy(cfg)
  cfg.data.mixture = dict(cfg.data.mixture, world_audio_qa=0.1, world_video_qa=0.1,
                          world_text=0.2)
  it = pipeline.make_iterator(cfg, "train", batch_size=8)
  seen, eops = set(), 0
  for _ in range(3):
    batch, stats = pipeline.split_stats(next(it))
    batch_lib.validate_batch(batch, cfg.model, cfg.model.decoder.vocab_size)
    assert stats["examples"] > 0
    for r in range(8):
      seen |= _check_row(batch["tokens"][r], batch["dock_mask"][r], batch["dock_index"][r],
                         batch["segment_ids"][r], cfg.model, tok)
    eops += int((batch["tokens"] == tok.eop).sum())
  assert seen == {"image", "audio", "video"} and eops > 0
