"""Autoregressive decoding with the KV cache: greedy, sampling (temperature,
top-k, top-p) and beam search with a length penalty.

Inputs are a LEFT-padded prompt batch in the contract of metalm_jax/batch.py
(docked images, sound clips, videos and encoded text allowed: every
encoder's inputs ride in `batch["encoders"]`). The prompt is prefilled in one decode
call (docking happens there), then one token per step is fed through
`MetaLM.decode_tokens` inside a `jax.lax.while_loop`. Everything is jitted;
compiled code is cached per (model, shapes, max_new_tokens, beam size);
sampling settings, eos / pad ids and the length penalty are traced values.
With `placement=` (metalm_jax/evaluate/placement.py) the loops are jitted with
explicit shardings: params as placed (e.g. the trainer's FSDP / tensor
shardings), prompt batch and outputs split over the mesh's batch axes.
`trace_count()` says how many loops were traced (= compiled) so far, so
callers that bucket prompt lengths can check that they compile once per bucket.

Outputs (`DecodeResult`):
  ids      int32 [B, max_new_tokens]: generated ids; the eos id is kept where
           generation stopped and `pad_id` fills the rest.
  lengths  int32 [B]: tokens before eos (max_new_tokens if no eos).
  scores   float32 [B]: sum of the model's log-probs (temperature 1) of the
           generated tokens up to and including eos; for beam search that sum
           divided by length ** length_penalty (length counts eos).
"""
from __future__ import annotations

import collections
import functools
from typing import Any, Mapping, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from metalm_jax import batch as batch_lib
from metalm_jax.models.metalm import MetaLM
from metalm_jax.registry import Registry

NEG = -1e9  # score of an impossible hypothesis; finite so sums stay NaN-free
DECODERS = Registry("decoding method")
_TRACES = collections.Counter()  # decoding method -> loops traced in this process


def trace_count(method: Optional[str] = None) -> int:
  """Decoding loops traced (each trace is one compile) in this process, for
  one method ('greedy', 'sample', 'beam') or all of them."""
  return _TRACES[method] if method else sum(_TRACES.values())


class DecodeResult(NamedTuple):
  ids: jax.Array
  lengths: jax.Array
  scores: jax.Array


# ----------------------------------------------------------------- KV cache

def init_cache(model: MetaLM, batch_size: int, cache_len: int):
  """Zero KV cache for `batch_size` rows of `cache_len` positions."""
  def init():
    dummy = jax.tree.map(jnp.asarray, batch_lib.dummy_batch(model.cfg, batch_size, cache_len))
    return model.init(jax.random.key(0), dummy, decode=True)["cache"]
  shapes = jax.eval_shape(init)
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def _prefill(model, params, batch, cache):
  """Runs the prompt into the cache; returns next-token logits [B, V] and cache."""
  logits, upd = model.apply({"params": params, "cache": cache}, batch, decode=True,
                            mutable=["cache"])
  return logits[:, -1], upd["cache"]


def _step(model, params, cache, tokens, positions):
  """Feeds tokens [B] at positions [B]; returns logits [B, V] and cache."""
  seg = jnp.ones_like(tokens)[:, None]
  logits, upd = model.apply({"params": params, "cache": cache}, tokens[:, None],
                            positions[:, None], seg, method=MetaLM.decode_tokens,
                            mutable=["cache"])
  return logits[:, -1], upd["cache"]


def _check(model: MetaLM, batch: Mapping[str, Any], max_new_tokens: int) -> None:
  if max_new_tokens < 1:
    raise ValueError(f"max_new_tokens={max_new_tokens} must be >= 1")
  limit = model.cfg.decoder.max_len
  positions = batch["positions"]
  # A global array spanning processes cannot be read here; its builder checks
  # the prompt lengths on the host (evaluators.prompt_seq_len).
  if model.cfg.decoder.positions != "rotary" and getattr(positions, "is_fully_addressable", True):
    # Generated token i is fed at position last + 1 + i, i <= max_new_tokens - 2.
    last = int(np.max(np.asarray(positions)[:, -1]))
    if last + max_new_tokens > limit:
      raise ValueError(f"prompt position {last} + max_new_tokens={max_new_tokens} exceeds "
                       f"model.decoder.max_len={limit}")


def _lengths(ids, eos_id: int):
  is_eos = ids == eos_id
  return jnp.where(is_eos.any(-1), jnp.argmax(is_eos, -1), ids.shape[1]).astype(jnp.int32)


# -------------------------------------------------------- token selection

def check_sampling(temperature: float, top_k: int, top_p: float) -> None:
  if not temperature > 0:
    raise ValueError(f"temperature={temperature} must be > 0 (use greedy for 0)")
  if top_k < 0:
    raise ValueError(f"top_k={top_k} must be >= 0")
  if not 0 < top_p <= 1:
    raise ValueError(f"top_p={top_p} must be in (0, 1]")


def sample_logits(logits, rng, temperature, top_k, top_p):
  """Samples ids [B] from softmax(logits / temperature) restricted to the
  top_k ids (0 = all; ties at the k-th value are kept) and to the smallest
  set of ids whose probability reaches top_p (1.0 = all). The settings may
  be traced scalars, so one compiled loop serves them all."""
  x = logits.astype(jnp.float32) / temperature
  vocab = x.shape[-1]
  desc = -jnp.sort(-x, axis=-1)
  k = jnp.where(top_k > 0, jnp.minimum(top_k, vocab), vocab)
  kth = jax.lax.dynamic_index_in_dim(desc, k - 1, axis=-1, keepdims=True)
  x = jnp.where(x < kth, -jnp.inf, x)
  desc = jnp.where(desc < kth, -jnp.inf, desc)
  probs = jax.nn.softmax(desc, axis=-1)
  before = jnp.cumsum(probs, axis=-1) - probs  # mass of strictly better ids
  kept = jnp.where((before < top_p) | (top_p >= 1), desc, jnp.inf)
  x = jnp.where(x < kept.min(-1, keepdims=True), -jnp.inf, x)
  return jax.random.categorical(rng, x, axis=-1).astype(jnp.int32)


def _select_loop(params, batch, rng, settings, eos_id, pad_id, *, model, max_new_tokens,
                 sampling):
  _TRACES["sample" if sampling else "greedy"] += 1  # runs once per trace
  b, length = batch["tokens"].shape
  n = max_new_tokens
  cache = init_cache(model, b, length + n)
  logits, cache = _prefill(model, params, batch, cache)
  first_pos = batch["positions"][:, -1] + 1

  def choose(logits, rng, done):
    if sampling:
      tok = sample_logits(logits, rng, *settings)
    else:
      tok = jnp.argmax(logits, -1).astype(jnp.int32)
    lp = jnp.take_along_axis(jax.nn.log_softmax(logits, -1), tok[:, None], -1)[:, 0]
    return jnp.where(done, pad_id, tok), jnp.where(done, 0.0, lp)

  done0 = jnp.zeros((b,), jnp.bool_)
  tok, lp = choose(logits, jax.random.fold_in(rng, 0), done0)
  ids = jnp.full((b, n), pad_id, jnp.int32).at[:, 0].set(tok)
  state = (jnp.int32(1), cache, tok, ids, tok == eos_id, lp)

  def cond(s):
    i, _, _, _, done, _ = s
    return (i < n) & ~done.all()

  def body(s):
    i, cache, tok, ids, done, score = s
    logits, cache = _step(model, params, cache, tok, first_pos + i - 1)
    tok, lp = choose(logits, jax.random.fold_in(rng, i), done)
    ids = jax.lax.dynamic_update_slice(ids, tok[:, None], (0, i))
    return i + 1, cache, tok, ids, done | (tok == eos_id), score + lp

  _, _, _, ids, _, score = jax.lax.while_loop(cond, body, state)
  return DecodeResult(ids, _lengths(ids, eos_id), score)


def _eos(eos_id: Optional[int]) -> jax.Array:
  return jnp.int32(-1 if eos_id is None else eos_id)


@functools.lru_cache(maxsize=None)
def _plain_jit(fn, static_names):
  return jax.jit(fn, static_argnames=static_names)


def _loop(fn, placement, replicated_args: int, **static):
  """fn(params, batch, *others, **static) jitted: with a `placement`
  (evaluate/placement.py) under its explicit shardings (params as placed,
  batch and outputs over the batch axes, others replicated), else plainly."""
  if placement is None:
    return functools.partial(_plain_jit(fn, tuple(sorted(static))), **static)
  return functools.partial(placement.call, placement.jit(fn, replicated_args, **static))


@DECODERS.register("greedy")
def greedy(model: MetaLM, params, batch, *, max_new_tokens: int, eos_id: Optional[int],
           pad_id: int = 0, placement=None) -> DecodeResult:
  """Arg-max decoding. `params` is the 'params' collection (boxed or not);
  with a `placement`, params and batch are global arrays placed by it."""
  _check(model, batch, max_new_tokens)
  settings = (jnp.float32(1), jnp.int32(0), jnp.float32(1))
  loop = _loop(_select_loop, placement, 4, model=model, max_new_tokens=max_new_tokens,
               sampling=False)
  return loop(params, batch, jax.random.key(0), settings, _eos(eos_id), jnp.int32(pad_id))


@DECODERS.register("sample")
def sample(model: MetaLM, params, batch, rng, *, max_new_tokens: int, eos_id: Optional[int],
           pad_id: int = 0, temperature: float = 1.0, top_k: int = 0,
           top_p: float = 1.0, placement=None) -> DecodeResult:
  """Ancestral sampling with temperature / top-k / top-p (see `sample_logits`)."""
  _check(model, batch, max_new_tokens)
  check_sampling(temperature, top_k, top_p)
  settings = (jnp.float32(temperature), jnp.int32(top_k), jnp.float32(top_p))
  loop = _loop(_select_loop, placement, 4, model=model, max_new_tokens=max_new_tokens,
               sampling=True)
  return loop(params, batch, rng, settings, _eos(eos_id), jnp.int32(pad_id))


# ------------------------------------------------------------ beam search

def _gather_rows(tree, rows):
  return jax.tree.map(lambda x: x[rows] if x.ndim else x, tree)


def _beam_loop(params, batch, eos_id, pad_id, length_penalty, *, model, beam_size,
               max_new_tokens):
  _TRACES["beam"] += 1  # runs once per trace
  b, length = batch["tokens"].shape
  k, n = beam_size, max_new_tokens
  lp_norm = lambda steps: jnp.asarray(steps, jnp.float32) ** length_penalty
  cache = init_cache(model, b, length + n)
  logits, cache = _prefill(model, params, batch, cache)
  cache = jax.tree.map(lambda x: jnp.repeat(x, k, axis=0) if x.ndim else x, cache)
  logprobs = jnp.repeat(jax.nn.log_softmax(logits, -1)[:, None], k, axis=1)  # [B, K, V]
  vocab = logprobs.shape[-1]
  first_pos = jnp.repeat(batch["positions"][:, -1] + 1, k)  # [B*K]

  def expand(t, logprobs, alive_seq, alive_lp, fin_seq, fin_score):
    """Extends every alive beam by every token at step t; keeps K of each kind."""
    cand = (alive_lp[:, :, None] + logprobs).reshape(b, k * vocab)
    top_lp, top_idx = jax.lax.top_k(cand, 2 * k)
    src, tok = top_idx // vocab, (top_idx % vocab).astype(jnp.int32)
    seqs = jnp.take_along_axis(alive_seq, src[..., None], axis=1)
    seqs = jax.lax.dynamic_update_slice(seqs, tok[..., None], (0, 0, t))
    is_eos = tok == eos_id
    # Finished pool: previous finished + candidates that just emitted eos.
    new_fin = jnp.where(is_eos, top_lp / lp_norm(t + 1), NEG)
    pool_score = jnp.concatenate([fin_score, new_fin], 1)
    pool_seq = jnp.concatenate([fin_seq, seqs], 1)
    fin_score, keep = jax.lax.top_k(pool_score, k)
    fin_seq = jnp.take_along_axis(pool_seq, keep[..., None], axis=1)
    # Alive: the best K candidates that did not emit eos.
    alive_lp, keep = jax.lax.top_k(jnp.where(is_eos, NEG, top_lp), k)
    alive_seq = jnp.take_along_axis(seqs, keep[..., None], axis=1)
    src = jnp.take_along_axis(src, keep, axis=1)
    tok = jnp.take_along_axis(tok, keep, axis=1)
    return alive_seq, alive_lp, fin_seq, fin_score, src, tok

  def settled(t, alive_lp, fin_score):
    """True per row when no alive beam can still enter the finished top K."""
    hi = jnp.maximum(alive_lp / lp_norm(t + 2), alive_lp / lp_norm(n))  # log-probs only fall
    return fin_score.min(-1) >= hi.max(-1)

  alive_lp = jnp.full((b, k), NEG, jnp.float32).at[:, 0].set(0.0)  # beams start identical
  empty = jnp.full((b, k, n), pad_id, jnp.int32)
  out = expand(0, logprobs, empty, alive_lp, empty, jnp.full((b, k), NEG, jnp.float32))
  alive_seq, alive_lp, fin_seq, fin_score, src, tok = out
  rows = (jnp.arange(b)[:, None] * k + src).reshape(-1)
  state = (jnp.int32(1), _gather_rows(cache, rows), tok.reshape(-1), alive_seq, alive_lp,
           fin_seq, fin_score)

  def cond(s):
    t, _, _, _, alive_lp, _, fin_score = s
    return (t < n) & ~settled(t - 1, alive_lp, fin_score).all()

  def body(s):
    t, cache, tok, alive_seq, alive_lp, fin_seq, fin_score = s
    logits, cache = _step(model, params, cache, tok, first_pos + t - 1)
    logprobs = jax.nn.log_softmax(logits, -1).reshape(b, k, vocab)
    alive_seq, alive_lp, fin_seq, fin_score, src, tok = expand(
        t, logprobs, alive_seq, alive_lp, fin_seq, fin_score)
    rows = (jnp.arange(b)[:, None] * k + src).reshape(-1)
    return (t + 1, _gather_rows(cache, rows), tok.reshape(-1), alive_seq, alive_lp, fin_seq,
            fin_score)

  t, _, _, alive_seq, alive_lp, fin_seq, fin_score = jax.lax.while_loop(cond, body, state)
  # Beams still alive at the end count as finished at their full length.
  # (If the loop settled early, they cannot beat the finished ones anyway.)
  pool_score = jnp.concatenate([fin_score, alive_lp / lp_norm(t)], 1)
  pool_seq = jnp.concatenate([fin_seq, alive_seq], 1)
  best = jnp.argmax(pool_score, -1)
  ids = jnp.take_along_axis(pool_seq, best[:, None, None], axis=1)[:, 0]
  score = jnp.take_along_axis(pool_score, best[:, None], axis=1)[:, 0]
  return DecodeResult(ids, _lengths(ids, eos_id), score)


@DECODERS.register("beam")
def beam_search(model: MetaLM, params, batch, *, beam_size: int, max_new_tokens: int,
                eos_id: Optional[int], pad_id: int = 0, length_penalty: float = 0.0,
                placement=None) -> DecodeResult:
  """Beam search; returns the best finished hypothesis per row, ranked by
  sum log-prob / length ** length_penalty (length in generated tokens,
  eos included). Stops early once no alive beam can still win."""
  _check(model, batch, max_new_tokens)
  vocab = model.cfg.decoder.vocab_size
  if not 1 <= beam_size <= vocab // 2:
    raise ValueError(f"beam_size={beam_size} must be in [1, vocab_size // 2 = {vocab // 2}]")
  loop = _loop(_beam_loop, placement, 3, model=model, beam_size=int(beam_size),
               max_new_tokens=max_new_tokens)
  return loop(params, batch, _eos(eos_id), jnp.int32(pad_id), jnp.float32(length_penalty))


def generate(model: MetaLM, params, batch, method: str = "greedy", **kwargs) -> DecodeResult:
  """Dispatches to a registered decoding method by name (greedy, sample, beam)."""
  return DECODERS.get(method)(model, params, batch, **kwargs)
