"""Running the model for evaluators: greedy / beam generation and ranking of
candidate continuations, over left-padded prompt batches split across the
mesh's batch shards (placement.map_rows: each process runs its rows; results
gathered to every process)."""
from __future__ import annotations

from typing import Any, List, Sequence, Tuple

import numpy as np

from metalm_jax.evaluate import decode as decode_lib
from metalm_jax.evaluate import placement as placement_lib
from metalm_jax.evaluate import prompts
from metalm_jax.evaluate import scoring
from metalm_jax.evaluate.evaluators.common import Env


def _bucket(n: int, size: int) -> int:
  return -(-n // size) * size


def prompt_seq_len(env: Env, model, batch_prompts: List[List[Any]], bucket: int,
                   room: int) -> int:
  """Width of a left-padded batch of prompts (the whole global batch, so
  every process agrees): the longest rounded up to a multiple of `bucket`
  (fewer compiles), leaving `room` positions for generated / scored tokens."""
  length = max(prompts.prompt_lengths(batch_prompts, env.tokenizer, model.cfg))
  limit = model.cfg.decoder.max_len - room
  if length > limit:
    raise ValueError(f"a prompt has {length} tokens; with {room} new tokens it exceeds "
                     f"model.decoder.max_len={model.cfg.decoder.max_len}")
  return min(_bucket(length, bucket), limit)


def generate_texts(env: Env, model, params, batch_prompts: List[List[Any]], ev) -> List[str]:
  """Decoded continuation (up to eos) of every prompt, in order."""
  tok, pl = env.tokenizer, env.placed()
  params = pl.put_params(params)
  new = int(ev.max_new_tokens)
  kw = dict(max_new_tokens=new, eos_id=tok.eos, pad_id=tok.pad, placement=pl)
  if ev.method == "beam":
    kw.update(beam_size=int(ev.beam_size), length_penalty=float(ev.length_penalty))
  elif ev.method != "greedy":
    raise ValueError(f"evals.*.method={ev.method!r}: evaluators decode with 'greedy' or 'beam'")

  def build(chunk, local):
    return prompts.build_batch(local, tok, model.cfg,
                               seq_len=prompt_seq_len(env, model, chunk, int(ev.bucket), new))

  def run(batch):
    res = decode_lib.generate(model, params, batch, ev.method, **kw)
    return res.ids, res.lengths

  out = placement_lib.map_rows(pl, batch_prompts, int(ev.batch_size), build, run)
  if out is None:
    return []
  ids, lengths = out
  return [tok.decode(ids[b, :lengths[b]]).strip() for b in range(len(batch_prompts))]


def rank_choices(env: Env, model, params, batch_prompts: List[List[Any]],
                 choices: Sequence[str], ev) -> Tuple[np.ndarray, np.ndarray]:
  """(index of the most likely choice [N], summed log-probs [N, C]); each
  choice is scored as its tokens followed by eos."""
  tok, pl = env.tokenizer, env.placed()
  params = pl.put_params(params)
  cand = [list(tok.encode(c)) + [tok.eos] for c in choices]
  width = max(len(c) for c in cand)

  def build(chunk, local):
    batch = prompts.build_batch(local, tok, model.cfg,
                                seq_len=prompt_seq_len(env, model, chunk, int(ev.bucket), width))
    return scoring.append_candidates(batch, [cand] * len(local), tok.pad, width)

  def run(batch):
    return scoring.sequence_logprobs(model, params, batch, placement=pl).sum

  out = placement_lib.map_rows(pl, batch_prompts, int(ev.batch_size), build, run,
                               rows_per_item=len(cand))
  scores = (np.zeros((0, len(cand)), np.float32) if out is None
            else out.reshape(len(batch_prompts), len(cand)))
  return scores.argmax(-1), scores


def clean_label(text: str) -> str:
  return text.strip().strip(".!?,;:").strip().lower()
