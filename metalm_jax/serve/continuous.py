"""Continuous batching on the KV cache (`--scheduler=continuous`): requests
join and leave a running decode between steps.

The decoder's KV cache keeps one write index for all rows (models/layers.py),
so a request joins by writing its prompt at that shared index: one decode
call of the prompt-length bucket over all `max_batch` slots, in which the
joining rows carry their left-padded prompts (docked images and clips
included) and every other row carries padding (segment 0: keys that no query
ever sees). The rows already decoding are unchanged by it: their own keys
and positions are untouched, and attention is by absolute cache position
with per-key validity (the joining slots' old keys are made invalid first:
a slot's previous request must not be seen). Then every step feeds each active row its last token
at its own position (inactive slots feed invalid padding). A row leaves as
soon as it meets eos or its max_tokens, and its slot takes the next waiting
request at the next step. When the cache has no room for a join (the shared
index plus the prompt and the longest remaining answer would pass
`cache_len`), waiting requests wait until the running ones finish, and the
cache is then reset.

Compiles: one step function and one join per prompt-length bucket, for the
fixed `max_batch` slots. Tokens are picked on the host from each row's
logits: greedy by arg-max (as decode.greedy), sampled rows by
`decode.sample_logits` with the row's own key (`seed`, folded with the step),
so an answer never depends on the other rows.
"""
from __future__ import annotations

import dataclasses
import secrets
from typing import List, Optional

import jax
import jax.numpy as jnp
import numpy as np

from metalm_jax import batch as batch_lib
from metalm_jax.convert.predictor import bucket_length
from metalm_jax.evaluate import decode, prompts
from metalm_jax.models.metalm import MetaLM
from metalm_jax.serve import errors
from metalm_jax.serve.batcher import Batcher, Job, Result


def _forget_rows(cache, rows):
  """The cache with every key of the slots `rows` (bool [B]) made invalid:
  a joining request must not see the keys of the one that left its slot."""
  def forget(path, x):
    if getattr(path[-1], "key", None) != "cached_valid":
      return x
    return x & ~rows.reshape((-1,) + (1,) * (x.ndim - 1))
  return jax.tree_util.tree_map_with_path(forget, cache)


@dataclasses.dataclass(eq=False)
class _Row:
  job: Job
  position: int          # the position the next fed token takes
  ids: List[int]
  key: Optional[jax.Array]


class ContinuousBatcher(Batcher):
  """A Batcher whose rows join and leave between decode steps."""

  def __init__(self, predictor, max_batch: int = 8, max_queue: int = 64,
               batch_wait_s: float = 0.005, cache_len: int = 0):
    super().__init__(predictor, max_batch, max_queue, batch_wait_s)
    self.cache_len = cache_len or 4 * predictor.model_cfg.decoder.max_len
    self.joined_mid_decode = 0  # requests that joined while others were decoding
    self.traces = 0             # join / step functions traced (= compiled)
    model = predictor.model

    def join(params, cache, batch, joining):
      self.traces += 1  # runs once per trace
      cache = _forget_rows(cache, joining)
      logits, upd = model.apply({"params": params, "cache": cache}, batch, decode=True,
                                mutable=["cache"])
      return logits[:, -1], upd["cache"]

    def step(params, cache, tokens, positions, valid):
      self.traces += 1
      logits, upd = model.apply({"params": params, "cache": cache}, tokens[:, None],
                                positions[:, None], valid[:, None].astype(jnp.int32),
                                method=MetaLM.decode_tokens, mutable=["cache"])
      return logits[:, -1], upd["cache"]

    self._join, self._step = jax.jit(join), jax.jit(step)
    self._sample = jax.jit(decode.sample_logits)

  def _pick(self, row: _Row, logits: np.ndarray, step: int) -> int:
    job = row.job
    if job.temperature == 0:
      return int(np.argmax(logits))
    key = jax.random.fold_in(row.key, step)
    return int(self._sample(jnp.asarray(logits)[None], key, jnp.float32(job.temperature),
                            jnp.int32(0), jnp.float32(job.top_p))[0])

  def _admit(self, free: int, idx: int, rows) -> List[Job]:
    """Waiting jobs that fit the free slots and the cache (FIFO); blocks while
    nothing runs and nothing waits."""
    with self._cond:
      while not self._queue and not rows and not self._closing:
        self._cond.wait()
      if not rows and self._queue and len(self._queue) < free and self.batch_wait_s > 0:
        self._cond.wait_for(lambda: len(self._queue) >= free, self.batch_wait_s)
      need = max([r.job.max_tokens - len(r.ids) for r in rows] + [0])
      while not rows and idx == 0 and self._queue and not self._fits(self._queue[0], 0):
        job = self._queue.popleft()  # does not fit even an empty cache
        if job.future.set_running_or_notify_cancel():
          job.future.set_exception(errors.ApiError(
              f"max_tokens={job.max_tokens}: the prompt ({job.prompt_len} positions) and the "
              f"answer do not fit the server's cache of {self.cache_len} positions",
              "max_tokens", "context_length_exceeded"))
      jobs: List[Job] = []
      for job in list(self._queue):
        if len(jobs) == free:
          break
        length = bucket_length(max([j.prompt_len for j in jobs] + [job.prompt_len]),
                               self.predictor.buckets)
        longest = max([need, job.max_tokens] + [j.max_tokens for j in jobs])
        if idx + length + longest > self.cache_len:
          break  # keep arrival order: later ones wait too
        jobs.append(job)
        self._queue.remove(job)
      return jobs

  def _fits(self, job: Job, idx: int) -> bool:
    length = bucket_length(job.prompt_len, self.predictor.buckets)
    return idx + length + job.max_tokens <= self.cache_len

  def _run(self) -> None:
    p, slots = self.predictor, self.max_batch
    cache, idx = None, 0
    rows: List[Optional[_Row]] = [None] * slots
    while True:
      active = [r for r in rows if r is not None]
      if not active:
        cache, idx = None, 0  # nothing running: a fresh cache
      free = [s for s in range(slots) if rows[s] is None]
      jobs = self._admit(len(free), idx, active)
      if not jobs and not active:
        if self._closing:
          with self._cond:
            if not self._queue:
              return
        continue
      jobs = [j for j in jobs if j.future.set_running_or_notify_cancel()]
      try:
        if cache is None:
          cache = decode.init_cache(p.model, slots, self.cache_len)
        if jobs:
          cache, idx = self._join_rows(jobs, free, rows, cache, idx, bool(active))
        if any(r is not None for r in rows):
          cache, idx = self._step_rows(rows, cache, idx)
      except Exception as e:  # every running caller gets the error; the thread goes on
        running = [r.job for r in rows if r is not None] + jobs
        for job in running:
          if not job.future.done():
            job.future.set_exception(e)
        rows, cache, idx = [None] * slots, None, 0

  def _join_rows(self, jobs, free, rows, cache, idx, busy):
    p = self.predictor
    tok, cfg = p.tokenizer, p.model_cfg
    length = bucket_length(max(j.prompt_len for j in jobs), p.buckets)
    part = prompts.build_batch([j.parts for j in jobs], tok, cfg, seq_len=length)
    batch = batch_lib.dummy_batch(cfg, self.max_batch, length)  # padding, nothing docked
    batch["tokens"][:] = tok.pad
    picked = free[:len(jobs)]
    for r, s in enumerate(picked):
      for k in batch:
        if k != "encoders":
          batch[k][s] = part[k][r]
      for name, inputs in part["encoders"].items():
        for key, value in inputs.items():
          batch["encoders"][name][key][s] = value[r]
    joining = np.zeros(self.max_batch, bool)
    joining[picked] = True
    logits, cache = self._join(p.params, cache, batch, joining)
    logits = np.asarray(logits)
    with self._cond:
      self.batches += 1
      self.joined_mid_decode += len(jobs) if busy else 0
    for s, job in zip(picked, jobs):
      seed = job.seed if job.seed is not None else secrets.randbits(31)
      row = _Row(job, job.prompt_len, [], jax.random.key(seed) if job.temperature else None)
      rows[s] = row
      self._advance(rows, s, self._pick(row, logits[s], 0))
    with self._cond:
      self.largest_batch = max(self.largest_batch, sum(r is not None for r in rows))
    return cache, idx + length

  def _step_rows(self, rows, cache, idx):
    p = self.predictor
    tok = p.tokenizer
    live = [r is not None for r in rows]
    tokens = np.array([r.ids[-1] if r else tok.pad for r in rows], np.int32)
    positions = np.array([r.position if r else 0 for r in rows], np.int32)
    logits, cache = self._step(p.params, cache, tokens, positions, np.array(live))
    logits = np.asarray(logits)
    for s, r in enumerate(rows):
      if r is not None:
        r.position += 1
        self._advance(rows, s, self._pick(r, logits[s], len(r.ids)))
    return cache, idx + 1

  def _advance(self, rows, s: int, token: int) -> None:
    """Appends a picked token to row s; a finished row leaves its slot."""
    row, eos = rows[s], self.predictor.tokenizer.eos
    if token == eos:
      result = Result(list(row.ids), "stop")
    else:
      row.ids.append(token)
      if len(row.ids) < row.job.max_tokens:
        return
      result = Result(list(row.ids), "length")
    rows[s] = None
    with self._cond:
      self.rows += 1
    row.job.future.set_result(result)
