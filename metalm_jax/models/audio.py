"""Whisper-shaped audio encoder: log-mel frontend, two 1-D convolutions,
sinusoidal positions, a pre-LN bidirectional Transformer, a final LayerNorm;
then pooling to a fixed number of vectors per clip for docking.

The batch carries waveforms (metalm_jax/batch.py); the log-mel features are
computed here (metalm_jax/models/log_mel.py), in float32.
"""
from __future__ import annotations

import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from metalm_jax.models import layers, log_mel, stack
from metalm_jax.registry import Registry

_gelu = functools.partial(jax.nn.gelu, approximate=False)  # Whisper's conv activation


def num_samples(cfg) -> int:
  return int(round(cfg.max_seconds * cfg.sample_rate))


def num_positions(cfg) -> int:
  """Vectors the convolutions emit per clip: ceil(frames / 2) (conv2 has stride 2)."""
  frames = log_mel.num_frames(num_samples(cfg), cfg.hop_length)
  return (frames - 1) // 2 + 1


def table_length(cfg) -> int:
  """Rows of the position table: `max_positions`, or 0 = exactly the clip's."""
  return cfg.get("max_positions", 0) or num_positions(cfg)


def whisper_sinusoids(length: int, dim: int) -> np.ndarray:
  """Whisper's table [length, dim]: sin | cos halves, timescales from 1 to
  10000 spaced geometrically over dim // 2 - 1 steps."""
  half = dim // 2
  inc = math.log(10000.0) / (half - 1)
  ang = np.arange(length)[:, None] * np.exp(-inc * np.arange(half))[None, :]
  return np.concatenate([np.sin(ang), np.cos(ang)], axis=1).astype(np.float32)


def check_config(cfg) -> None:
  """Raises ValueError naming the field (model.encoders.<audio>.*)."""
  f = "model.encoders.<audio>"
  log_mel.check_settings(num_samples(cfg), cfg.sample_rate, cfg.n_fft, cfg.hop_length,
                         cfg.num_mel_bins)
  if cfg.emb_dim % 2 or cfg.emb_dim < 4:
    raise ValueError(f"{f}.emb_dim={cfg.emb_dim}: sinusoidal positions need an even width >= 4")
  n, t = num_positions(cfg), table_length(cfg)
  if n > t:
    raise ValueError(f"{f}.max_seconds={cfg.max_seconds} gives {n} positions > "
                     f"{f}.max_positions={cfg.max_positions}")
  if cfg.pool not in POOLS:
    raise ValueError(f"{f}.pool={cfg.pool!r}; known: {list(POOLS)}")
  if not 1 <= cfg.num_vectors <= n:
    raise ValueError(f"{f}.num_vectors={cfg.num_vectors} must be in [1, {n}] "
                     f"(the clip's {n} encoder positions)")


class AudioEncoder(nn.Module):
  """Waveforms [B, S] -> every position's state [B, ceil(S // hop / 2), emb_dim].

  cfg: sample_rate, max_seconds, n_fft, hop_length, num_mel_bins,
  max_positions (0 = the clip's), emb_dim, num_layers, num_heads, mlp_dim,
  activation, norm, ln_eps, dropout, use_bias + the stack options. The
  position table is a param initialised with Whisper's sinusoids (an
  imported model's table is loaded as-is); clips shorter than the table use
  its first rows. Freeze it with an optimizer group on `pos_embedding` if it
  should stay fixed as in Whisper.
  """
  cfg: Any
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, waveform, deterministic=True):
    cfg = self.cfg
    check_config(cfg)
    if waveform.shape[-1] != num_samples(cfg):
      raise ValueError(f"waveform has {waveform.shape[-1]} samples; config max_seconds="
                       f"{cfg.max_seconds} at sample_rate={cfg.sample_rate} is "
                       f"{num_samples(cfg)}")
    feats = log_mel.log_mel(waveform, cfg.sample_rate, cfg.n_fft, cfg.hop_length,
                            cfg.num_mel_bins)  # [B, frames, mels] float32
    conv = functools.partial(
        nn.Conv, cfg.emb_dim, (3,), padding=[(1, 1)], dtype=self.dtype,
        param_dtype=jnp.float32,
        kernel_init=layers.param_init(nn.initializers.lecun_normal(), (None, None, "embed")),
        bias_init=layers.param_init(nn.initializers.zeros, ("embed",)))
    x = _gelu(conv(name="conv1")(feats.astype(self.dtype)))
    x = _gelu(conv(strides=(2,), name="conv2")(x))
    init = lambda _key, shape, _dtype=jnp.float32: jnp.asarray(whisper_sinusoids(*shape))
    pos = self.param("pos_embedding", layers.param_init(init, ("length", "embed")),
                     (table_length(cfg), cfg.emb_dim))
    x = x + pos[:x.shape[1]].astype(self.dtype)
    x = layers.constrain(x, ("act_batch", "act_length", "act_embed"))
    if cfg.get("dropout", 0.0):
      x = nn.Dropout(cfg.dropout)(x, deterministic=deterministic)
    x = stack.apply(stack.build(cfg, self.dtype, field="model.encoders.<audio>"), x,
                    deterministic=deterministic)
    return layers.LayerNorm(cfg.ln_eps, self.dtype, name="final_norm")(x)


# ---- pooling to num_vectors per clip -------------------------------------------
# Each entry: (t positions, n vectors) -> how to take n vectors from [B, t, D].
POOLS = Registry("audio pooling")


def windows(t: int, n: int):
  """Window i covers positions [floor(i t / n), ceil((i + 1) t / n)): n
  windows that tile the clip (overlapping by one where n does not divide t)."""
  i = np.arange(n)
  return (i * t) // n, -((-(i + 1) * t) // n)


@POOLS.register("avg")
def avg_pool(x, n: int):
  """Mean over each window (adaptive average pooling)."""
  t = x.shape[1]
  lo, hi = windows(t, n)
  pos = np.arange(t)[None, :]
  m = ((pos >= lo[:, None]) & (pos < hi[:, None])).astype(np.float32)
  m /= m.sum(1, keepdims=True)
  return jnp.einsum("nt,btd->bnd", jnp.asarray(m, x.dtype), x,
                    precision=jax.lax.Precision.HIGHEST)


@POOLS.register("stride")
def stride_pool(x, n: int):
  """The position at each window's centre, (2i + 1) t // 2n."""
  t = x.shape[1]
  return jnp.take(x, (2 * np.arange(n) + 1) * t // (2 * n), axis=1)


def pool(x, n: int, kind: str):
  """[B, t, D] -> [B, n, D] by the named pooling."""
  return POOLS.get(kind)(x, n)
