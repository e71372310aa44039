"""First-use preparation: build the embedded world data set and train its
tokenizer, once, safely when several processes start together.

Preparation runs under an exclusive file lock in the data dir: the first
process builds, the others wait on the lock and then find everything ready.
The data dir is local by intent (os / fcntl here): the lock needs a POSIX file
system and array_record reads local files (a bucket is mounted with gcsfuse;
see train/input.py's check and the launchers' --data_bucket).
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import string

import tensorflow_datasets as tfds

from metalm_jax.data import tokenizer as tok_lib
from metalm_jax.data import tokenizer_kinds


def data_dir(data_cfg) -> str:
  return os.path.abspath(os.path.expanduser(data_cfg.data_dir))


@contextlib.contextmanager
def file_lock(path: str):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "a") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def world_builder(data_cfg):
  from metalm_jax.data.builders import world  # registers the builder
  return world.MetalmWorld(config=data_cfg.world, data_dir=data_dir(data_cfg),
                           file_format="array_record")


# Bumped whenever the tokenizer's training text changes, so a data dir never
# serves a tokenizer trained by an older recipe (2: prompt vocabulary, capitals,
# BPE; 3: the <audio> / <video> brackets and the world's sound and video text;
# 4: world 1.3.0's NLI text, "only" premises and "the Z S is C." hypotheses;
# 5: world 1.4.0's documents, the binding names and prompt, the text_qa templates).
TOKENIZER_VERSION = 5
# BPE, not unigram: on the world's small vocabulary SentencePiece's unigram
# trainer keeps ~200 pieces of 1024 and cuts frequent words ("question" into 7
# pieces); BPE learns ~750 and keeps every template and label word whole.
WORLD_TOKENIZER_TYPE = "bpe"


def tokenizer_path(data_cfg, vocab_size: int) -> str:
  return os.path.join(data_dir(data_cfg), "tokenizers",
                      f"metalm_world_{data_cfg.world}_{vocab_size}_v{TOKENIZER_VERSION}.model")


def capitalised(text: str) -> str:
  return text[:1].upper() + text[1:]


def world_texts(records):
  """Training text for the tokenizer: every text field of the train split,
  and the prompt vocabulary (formats.prompt_vocabulary: templates and label
  words), as written and capitalised, once per record (so its words are as
  frequent as the world's and come out as whole pieces), plus every capital
  letter and digit (so capitals never encode as <unk>). The world's text stays
  lower case; each record's first caption also comes capitalised. The sound
  and video text (captions, questions, answers; the audio+image questions)
  counts as the rest. `records`:
  random-access records of the world's train split (tfds, or dicts of
  world.scene_record merged with world_av.av_record)."""
  from metalm_jax.data import formats, world_av
  from metalm_jax.data.builders.common import as_str
  vocab = formats.prompt_vocabulary()
  yield " ".join(string.ascii_letters + string.digits + string.punctuation)
  yield from vocab
  for i in range(len(records)):
    r = records[i]
    yield vocab[i % len(vocab)]
    yield capitalised(vocab[(i + 1) % len(vocab)])
    for field in ("captions", "questions"):
      yield from (as_str(t) for t in r[field])
    yield capitalised(as_str(r["captions"][0]))
    yield from (as_str(a) for a in r["answers"].reshape(-1)[:10])
    yield as_str(r["premise"])
    yield as_str(r["hypothesis"])
    yield from as_str(r["document"]).split("\n\n")
    yield world_av.AV_QUESTIONS[i % len(world_av.AV_QUESTIONS)]
    for kind in ("audio", "video"):
      for field in ("captions", "questions"):
        yield from (as_str(t) for t in r[f"{kind}_{field}"])
      yield from (as_str(a[0]) for a in r[f"{kind}_answers"])


def ensure_world(data_cfg):
  """Builds the embedded world data set if it is missing; returns its builder."""
  builder = world_builder(data_cfg)
  if not builder.is_prepared():
    with file_lock(os.path.join(data_dir(data_cfg), ".metalm_prepare.lock")):
      builder = world_builder(data_cfg)
      if not builder.is_prepared():
        tfds.disable_progress_bar()
        builder.download_and_prepare()
  return builder


def world_records(data_cfg, split: str):
  """Random-access records (plain dicts) of an embedded world split: train,
  validation or test_heldout. Text fields are bytes; the image is PNG bytes
  (`images.to_rgb` then `images.preprocess_image` give the encoder input)."""
  return ensure_world(data_cfg).as_data_source(split=split)


def ensure_prepared(data_cfg, vocab_size: int) -> str:
  """Builds the embedded world (if missing) and its tokenizer of `vocab_size`
  (if missing); returns the tokenizer path."""
  builder = ensure_world(data_cfg)
  path = tokenizer_path(data_cfg, vocab_size)
  if not os.path.exists(path):
    with file_lock(os.path.join(data_dir(data_cfg), ".metalm_prepare.lock")):
      if not os.path.exists(path):
        tok_lib.train_tokenizer(world_texts(builder.as_data_source(split="train")), vocab_size,
                                path, model_type=WORLD_TOKENIZER_TYPE)
  return path


def load_tokenizer(config):
  """The tokenizer of a run config (`config.data.tokenizer`: a SentencePiece
  .model or an HF tokenizer.json, data/tokenizer_kinds.py; or the embedded
  one, prepared on first use). Checks its size against the decoder vocab."""
  want = config.model.decoder.vocab_size
  path = config.data.tokenizer or ensure_prepared(config.data, want)
  tok = tokenizer_kinds.load(path)
  tokenizer_kinds.check_vocab(tok, path, want, "config.model.decoder.vocab_size")
  return tok


def ensure_manual(name: str, data_cfg) -> None:
  """Builds a real-data builder from `data_cfg.manual_dirs[name]` if missing."""
  import metalm_jax.data.builders  # noqa: F401  registers our builders with tfds
  builder = tfds.builder(name, data_dir=data_dir(data_cfg), file_format="array_record")
  if builder.is_prepared():
    return
  manual = data_cfg.manual_dirs.get(name.split("/")[0], "")
  if not manual:
    raise ValueError(f"data set {name!r} is not prepared in {data_dir(data_cfg)} and "
                     f"config.data.manual_dirs[{name.split('/')[0]!r}] is empty")
  with file_lock(os.path.join(data_dir(data_cfg), ".metalm_prepare.lock")):
    if not builder.is_prepared():
      tfds.disable_progress_bar()
      builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
          manual_dir=os.path.expanduser(manual)))


def ensure_jsonl(name: str, folder: str, data_cfg, max_bad_fraction: float = 0.1,
                 shards: str = "") -> str:
  """Builds your data set NAME from FOLDER's JSONL manifests, or from WebDataset
  `shards` (builders/jsonl.py), into the data dir if it is not there; returns
  its directory."""
  from metalm_jax.data import user_sets
  from metalm_jax.data.builders import jsonl
  user_sets.check_name(name)
  make = lambda: jsonl.MetalmJsonl(  # noqa: E731
      config=jsonl.JsonlConfig(name=name, folder=folder, shards=shards,
                               max_bad_fraction=max_bad_fraction),
      data_dir=data_dir(data_cfg), file_format="array_record")
  builder = make()
  if not builder.is_prepared():
    with file_lock(os.path.join(data_dir(data_cfg), ".metalm_prepare.lock")):
      builder = make()
      if not builder.is_prepared():
        tfds.disable_progress_bar()
        builder.download_and_prepare()
  return user_sets.builder_dir(data_cfg, name)
