"""Requests of many callers decoded together: a background thread takes the
waiting requests and runs them as one batch through the Predictor's decoding
on the KV cache (metalm_jax.evaluate.decode).

Scheduling is per batch, not per step: a batch is formed from the requests
waiting when the previous batch finishes (up to `max_batch` rows, in arrival
order, those that share the first one's decoding settings), and it decodes
to the end (every row to eos or to the batch's token budget) before the next
one starts; requests arriving meanwhile wait for the next batch. Rows do not
leave or join between decode steps here; serve/continuous.py is the
scheduler where they do (`--scheduler=continuous`).

A batch's shapes are bucketed as the Predictor's are (rows: the next power of
two up to max_batch, filled with copies of the last prompt; prompt length:
`predictor.bucket_length`; decode steps: the next power of two of the
largest max_tokens, capped by the decoder's positions), so compiles happen
once per (rows, length bucket, steps bucket), and each row's answer is
truncated to its own max_tokens. Greedy rows are independent of each other,
so an answer does not depend on what it was batched with. Sampled requests
are batched only with requests of the same temperature and top_p; a request
with a seed runs alone, so the seed alone fixes its answer.
"""
from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import secrets
import threading
from typing import Any, Deque, List, Optional

import jax
import numpy as np

from metalm_jax.convert.predictor import bucket_length
from metalm_jax.evaluate import decode, prompts
from metalm_jax.serve import errors


@dataclasses.dataclass(eq=False)
class Job:
  """One request: its prompt parts and decoding settings (temperature 0 = greedy)."""
  parts: List[Any]
  prompt_len: int
  max_tokens: int
  temperature: float = 0.0
  top_p: float = 1.0
  seed: Optional[int] = None
  future: concurrent.futures.Future = dataclasses.field(
      default_factory=concurrent.futures.Future)

  def key(self):
    """Requests with equal keys may share a batch."""
    if self.temperature == 0:
      return ("greedy",)
    if self.seed is not None:
      return ("seeded", id(self))
    return ("sample", self.temperature, self.top_p)


@dataclasses.dataclass(frozen=True)
class Result:
  ids: List[int]   # generated ids, eos excluded
  finish: str      # "stop" (eos) or "length" (max_tokens reached)


def steps_for(max_tokens: int, prompt_len: int, decoder_cfg) -> int:
  """Decode steps of a batch: the next power of two of max_tokens, capped so
  that learned positions stay below decoder.max_len."""
  n = 1 << (int(max_tokens) - 1).bit_length()
  if decoder_cfg.positions != "rotary":
    n = min(n, decoder_cfg.max_len - prompt_len + 1)
  return max(n, int(max_tokens))


def room(prompt_len: int, decoder_cfg) -> Optional[int]:
  """The most tokens a prompt of `prompt_len` positions can be followed by
  (None: no limit from the positions)."""
  if decoder_cfg.positions == "rotary":
    return None
  return decoder_cfg.max_len - prompt_len + 1


class Batcher:
  """Takes Jobs (`submit`), answers them through their futures."""

  def __init__(self, predictor, max_batch: int = 8, max_queue: int = 64,
               batch_wait_s: float = 0.005):
    if max_batch < 1 or max_queue < 1:
      raise ValueError(f"max_batch={max_batch} and max_queue={max_queue} must be >= 1")
    self.predictor = predictor
    self.max_batch, self.max_queue, self.batch_wait_s = max_batch, max_queue, batch_wait_s
    self._queue: Deque[Job] = collections.deque()
    self._cond = threading.Condition()
    self._closing = False
    self._thread: Optional[threading.Thread] = None
    self.batches = 0            # batches decoded so far
    self.rows = 0               # requests answered through them
    self.largest_batch = 0      # most requests in one batch

  def start(self) -> None:
    self._thread = threading.Thread(target=self._run, name="serve-batcher", daemon=True)
    self._thread.start()

  def stop(self, timeout: Optional[float] = None) -> None:
    """Takes no new jobs, answers the queued ones, then ends the thread."""
    with self._cond:
      self._closing = True
      self._cond.notify_all()
    if self._thread is not None:
      self._thread.join(timeout)

  def queued(self) -> int:
    with self._cond:
      return len(self._queue)

  def submit(self, job: Job) -> concurrent.futures.Future:
    with self._cond:
      if self._closing:
        raise errors.shutting_down()
      if len(self._queue) >= self.max_queue:  # timed-out requests hold no place
        self._queue = collections.deque(j for j in self._queue if not j.future.cancelled())
      if len(self._queue) >= self.max_queue:
        raise errors.queue_full(1)
      self._queue.append(job)
      self._cond.notify_all()
    return job.future

  def _take(self) -> Optional[List[Job]]:
    with self._cond:
      while not self._queue and not self._closing:
        self._cond.wait()
      if not self._queue:
        return None
      if len(self._queue) < self.max_batch and self.batch_wait_s > 0:
        # Idle until now: give callers arriving together a moment to join.
        self._cond.wait_for(lambda: len(self._queue) >= self.max_batch, self.batch_wait_s)
      key = self._queue[0].key()
      jobs = [j for j in self._queue if j.key() == key][:self.max_batch]
      for j in jobs:
        self._queue.remove(j)
      return jobs

  def _run(self) -> None:
    while True:
      jobs = self._take()
      if jobs is None:
        return
      jobs = [j for j in jobs if j.future.set_running_or_notify_cancel()]  # timed out: skipped
      if not jobs:
        continue
      try:
        results = self.run_batch(jobs)
      except Exception as e:  # each caller gets the error; the thread goes on
        for j in jobs:
          j.future.set_exception(e)
        continue
      for j, r in zip(jobs, results):
        j.future.set_result(r)

  def run_batch(self, jobs: List[Job]) -> List[Result]:
    """Decodes `jobs` (sharing one key) as one batch."""
    p = self.predictor
    tok, cfg = p.tokenizer, p.model_cfg
    rows = min(self.max_batch, 1 << (len(jobs) - 1).bit_length())
    parts = [j.parts for j in jobs]
    parts += [parts[-1]] * (rows - len(parts))
    longest = max(j.prompt_len for j in jobs)
    n = steps_for(max(j.max_tokens for j in jobs), longest, cfg.decoder)
    batch = prompts.build_batch(parts, tok, cfg, seq_len=bucket_length(longest, p.buckets))
    first = jobs[0]
    if first.temperature == 0:
      res = decode.greedy(p.model, p.params, batch, max_new_tokens=n, eos_id=tok.eos,
                          pad_id=tok.pad)
    else:
      seed = first.seed if first.seed is not None else secrets.randbits(31)
      res = decode.sample(p.model, p.params, batch, jax.random.key(seed), max_new_tokens=n,
                          eos_id=tok.eos, pad_id=tok.pad, temperature=first.temperature,
                          top_p=first.top_p)
    ids, lengths = np.asarray(res.ids), np.asarray(res.lengths)
    with self._cond:
      self.batches += 1
      self.rows += len(jobs)
      self.largest_batch = max(self.largest_batch, len(jobs))
    out = []
    for r, j in enumerate(jobs):
      got = int(lengths[r])
      if got < j.max_tokens:  # eos within its own budget
        out.append(Result(ids[r, :got].tolist(), "stop"))
      else:
        out.append(Result(ids[r, :j.max_tokens].tolist(), "length"))
    return out
