"""The Grain input pipeline: source -> decode -> tokenise -> spans -> pack -> batch.

    it = make_iterator(config, "train", batch_size=8)
    batch = next(it)                       # dict of numpy arrays
    model_batch, counts = split_stats(batch)

Per mixture entry (`config.data.mixture`: {source name: weight}, sources in
`sources.SOURCES`): tfds.data_source -> this process's shard -> shuffle ->
repeat -> per-example task (tasks.py; images decoded, resized, normalised;
sound clips and videos decoded and docked the same way, models/modalities/) ->
DropFailed (caption / vqa / nli rows) or PackDocuments (text rows with
language spans). Entries are mixed by weight (deterministic proportions),
batched, and optionally produced by `config.data.num_workers` processes.

Batches follow metalm_jax/batch.py for `config.model`, plus one extra key:

    stats  {name: int64 scalar}  counts since the previous batch (summed over
           its rows, including records skipped on the way): `examples` used,
           `skipped_bad_image`, `skipped_empty_text`, `skipped_bad_label`,
           `converted_image_mode`, `resized_nonsquare_image`, `truncated_text`,
           `skipped_unreadable_record` (with data.skip_corrupt_records), and
           the audio / video decoders' counters (media/audio.py, media/video.py:
           `skipped_bad_audio`, `skipped_silent_audio`, `resampled_audio`, ...).

The counts travel inside the batch, so they survive worker processes; call
`split_stats` before feeding the model and sum the counts in the trainer.
The iterator's `get_state()/set_state()` and `grain.checkpoint.CheckpointSave`
restore it exactly (also with worker processes, for the same num_workers).
"""
from __future__ import annotations

import importlib
from typing import Any, Dict, Tuple

import grain
import numpy as np
import tensorflow_datasets as tfds

from metalm_jax import batch as batch_lib
from metalm_jax.data import packing
from metalm_jax.data import prepare
from metalm_jax.data import records as records_lib
from metalm_jax.data import sources as sources_lib
from metalm_jax.data import tasks as tasks_lib
from metalm_jax.models import modalities


def split_stats(batch: Dict[str, Any]) -> Tuple[Dict[str, Any], Dict[str, int]]:
  """(batch without `stats`, {counter: int})."""
  batch = dict(batch)
  stats = batch.pop("stats", {})
  return batch, {k: int(np.sum(v)) for k, v in stats.items()}


def make_context(config, tokenizer) -> tasks_lib.Context:
  """Checks the data config against the model and gathers the task inputs."""
  data, model = config.data, config.model
  by_type = {}
  for name in sorted(model.encoders):
    by_type.setdefault(model.encoders[name].type, name)
  text = data.spans.encoder
  if text and text not in model.encoders:
    raise ValueError(f"config.data.spans.encoder={text!r} is not in config.model.encoders "
                     f"({sorted(model.encoders)})")
  if text:
    enc = model.encoders[text]
    if enc.type != "bert":
      raise ValueError(f"config.data.spans.encoder={text!r} has type {enc.type!r}, need 'bert'")
    for field in ("max_len", "prefix_max"):
      if data.spans[field] > enc.max_len:
        raise ValueError(f"config.data.spans.{field}={data.spans[field]} exceeds "
                         f"config.model.encoders.{text}.max_len={enc.max_len}")
    if enc.vocab_size != tokenizer.vocab_size:
      raise ValueError(f"config.model.encoders.{text}.vocab_size={enc.vocab_size} differs from "
                       f"the tokenizer's {tokenizer.vocab_size} (the encoder shares it)")
  docked = data.spans.get("episode_docked", 1.0)
  if not 0.0 <= docked <= 1.0:
    raise ValueError(f"config.data.spans.episode_docked={docked}: must be in [0, 1]")
  if data.seq_len > model.decoder.max_len:
    raise ValueError(f"config.data.seq_len={data.seq_len} exceeds "
                     f"config.model.decoder.max_len={model.decoder.max_len}")
  vision = by_type.get("vit", "")
  for kind in modalities.media_kinds():  # each docked kind: one item of it plus text fits a row
    name = by_type.get(modalities.MODALITIES.get(kind).encoder_type, "")
    if name:
      need = batch_lib.slot_length(model.encoders[name]) + 5
      if data.seq_len < need:
        article = "an" if kind[0] in "aeiou" else "a"
        raise ValueError(f"config.data.seq_len={data.seq_len} cannot hold {article} {kind} span of "
                         f"config.model.encoders.{name} plus text (need >= {need})")
  return tasks_lib.Context(
      tokenizer=tokenizer, model_cfg=model, seq_len=int(data.seq_len),
      vision=vision, text=text, prefix_max=int(data.spans.prefix_max),
      span_min=int(data.spans.min_len), span_max=int(data.spans.max_len),
      span_ratio=float(data.spans.ratio), max_doc_tokens=int(data.max_doc_tokens),
      image_mean=tuple(data.image_mean), image_std=tuple(data.image_std),
      read_threads=int(data.read_threads), prefetch_buffer=int(data.prefetch_buffer),
      audio=by_type.get("whisper", ""), video=by_type.get("video", ""),
      episode_docked=float(data.spans.get("episode_docked", 1.0)),
      caption_contexts=tuple(data.get("caption_contexts", ()) or ()))


def data_source(data_cfg, source_name: str, split: str, skip_corrupt: bool = False):
  """The random-access tfds source of a named source (prepared if needed).
  A corrupt record raises naming the data set, split, shard file and index,
  or with `skip_corrupt` is returned as `records.UNREADABLE` (records.py)."""
  src = sources_lib.SOURCES.get(source_name)
  name = src.dataset(data_cfg)
  if src.embedded:
    prepare.ensure_world(data_cfg)
  elif name.split("/")[0] in data_cfg.manual_dirs:
    prepare.ensure_manual(name, data_cfg)
  import metalm_jax.data.builders  # noqa: F401  registers our builders with tfds
  if src.module:  # without TensorFlow, tfds does not import its catalogue eagerly
    importlib.import_module(src.module)
  tfds_split = sources_lib.tfds_split(source_name, split)
  if src.read:
    records = src.read(data_cfg, tfds_split)
  elif src.fields:  # only the fields the source's extract reads are deserialised
    raw = tfds.data_source(name, split=tfds_split, data_dir=prepare.data_dir(data_cfg),
                           deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES)
    records = records_lib.FieldRecords(raw, src.fields, source_name)
  else:
    records = tfds.data_source(name, split=tfds_split, data_dir=prepare.data_dir(data_cfg))
  return records_lib.CheckedRecords(records, name, tfds_split, skip=skip_corrupt)


def _seed(*parts: int) -> int:
  return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])


def component(records, name: str, ctx: tasks_lib.Context, comp: int, seed: int, *,
              process_index: int = 0, process_count: int = 1, shuffle: bool = True,
              num_epochs: int | None = None) -> grain.IterDataset:
  """One mixture entry: any random-access `records` source of source `name`
  -> rows with `stats` (before batching)."""
  if len(records) < process_count:
    raise ValueError(f"data source {name!r} has {len(records)} records, fewer than "
                     f"process_count={process_count}")
  ds = grain.MapDataset.source(records)[process_index::process_count]
  if shuffle:
    ds = ds.shuffle(seed=_seed(seed, comp))
  ds = ds.repeat(num_epochs)
  ds = ds.map_with_index(tasks_lib.PrepareExample(ctx, name, comp, seed))
  it = ds.to_iter_dataset(grain.ReadOptions(num_threads=ctx.read_threads,
                                            prefetch_buffer_size=ctx.prefetch_buffer))
  if sources_lib.SOURCES.get(name).task == "text":
    return packing.PackDocuments(it, ctx, seed, comp)
  return packing.DropFailed(it)


def make_dataset(config, split: str, *, batch_size: int, process_index: int = 0,
                 process_count: int = 1, seed: int | None = None, shuffle: bool = True,
                 num_epochs: int | None = None) -> grain.IterDataset:
  """The pipeline as a grain IterDataset (see the module docstring)."""
  data = config.data
  if batch_size < 1:
    raise ValueError(f"batch_size={batch_size} must be >= 1")
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} not in [0, process_count={process_count})")
  seed = int(config.get("seed", 0) if seed is None else seed)
  tokenizer = prepare.load_tokenizer(config)
  ctx = make_context(config, tokenizer)
  mixture = dict(data.mixture)
  if not mixture or any(w <= 0 for w in mixture.values()):
    raise ValueError(f"config.data.mixture={mixture} needs positive weights")
  parts = {}
  for comp, name in enumerate(sorted(mixture)):
    records = data_source(data, name, split, bool(data.get("skip_corrupt_records", False)))
    parts[name] = component(records, name, ctx, comp, seed,
                            process_index=process_index, process_count=process_count,
                            shuffle=shuffle, num_epochs=num_epochs)
  ds = parts[next(iter(parts))] if len(parts) == 1 else grain.IterDataset.mix(
      parts, {k: float(v) for k, v in mixture.items()})
  ds = ds.batch(batch_size, drop_remainder=True, batch_fn=packing.collate)
  if data.num_workers > 0:
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=int(data.num_workers)))
  return ds


def make_iterator(config, split: str, *, batch_size: int, process_index: int = 0,
                  process_count: int = 1, seed: int | None = None, shuffle: bool = True,
                  num_epochs: int | None = None) -> grain.DatasetIterator:
  """Per-process batches of `batch_size` rows (see the module docstring)."""
  return iter(make_dataset(config, split, batch_size=batch_size, process_index=process_index,
                           process_count=process_count, seed=seed, shuffle=shuffle,
                           num_epochs=num_epochs))
