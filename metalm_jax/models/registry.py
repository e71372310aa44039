"""Encoders by name. Each wrapper maps the batch contract's per-encoder inputs
(metalm_jax/batch.py) to vectors [B, N, T, width] for docking.

Adding a modality: a module file, a MODALITIES entry in batch.py (slot length
and input spec) and an ENCODERS entry here (plus its preset builder in
presets.ENCODER_PRESETS, which the model property tests run). An encoder class
may define `check_config(cfg, field)` (metalm.check_model_config calls it) and
`flops_tokens(cfg)` (the FLOPs count of train/metrics.py).
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from metalm_jax.models import audio
from metalm_jax.models import video
from metalm_jax.models.text_encoder import TextEncoder
from metalm_jax.models.vision import VisionEncoder
from metalm_jax.registry import Registry

ENCODERS = Registry("encoder")


def valid_only(x, inputs):
  """`x` [B, N, ...] with the items that `inputs["valid"]` [B, N] marks
  invalid set to 0, so whatever they hold (NaN included) reaches neither the
  encoder's outputs nor the gradients (no `valid`: every item is used)."""
  valid = inputs.get("valid")
  if valid is None:
    return x
  return jnp.where(valid.reshape(valid.shape + (1,) * (x.ndim - 2)), x, jnp.zeros((), x.dtype))


@ENCODERS.register("vit")
class VitItems(nn.Module):
  """Images [B, N, H, W, 3] -> [B, N, tokens, width]; invalid items are
  encoded as zeros (never docked)."""
  cfg: Any
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, inputs, deterministic=True):
    pixels = valid_only(inputs["pixels"], inputs)  # [B, N, H, W, 3]
    b, n = pixels.shape[:2]
    out = VisionEncoder(self.cfg, self.dtype, name="vit")(
        pixels.reshape((b * n,) + pixels.shape[2:]), deterministic)
    return out.reshape((b, n) + out.shape[1:])


@ENCODERS.register("bert")
class TextItems(nn.Module):
  cfg: Any
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, inputs, deterministic=True):
    tokens, mask = inputs["tokens"], inputs["mask"]  # [B, N, S]
    b, n, s = tokens.shape
    out = TextEncoder(self.cfg, self.dtype, name="bert")(
        tokens.reshape(b * n, s), mask.reshape(b * n, s), deterministic=deterministic)
    return out.reshape(b, n, s, -1)


@ENCODERS.register("whisper")
class AudioItems(nn.Module):
  """Clips [B, N, S] -> [B, N, num_vectors, width]: the Whisper-shaped encoder,
  pooled (`cfg.pool`). Invalid items (valid False) are encoded as silence and
  their vectors zeroed, so whatever their samples hold (NaN included) reaches
  neither the outputs nor the gradients."""
  cfg: Any
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, inputs, deterministic=True):
    wave, valid = valid_only(inputs["waveform"], inputs), inputs["valid"]  # [B, N, S], [B, N]
    b, n, s = wave.shape
    out = audio.AudioEncoder(self.cfg, self.dtype, name="whisper")(
        wave.reshape(b * n, s), deterministic)
    out = audio.pool(out, self.cfg.num_vectors, self.cfg.pool)
    out = out.reshape((b, n) + out.shape[1:])
    return jnp.where(valid[..., None, None], out, jnp.zeros((), out.dtype))


@ENCODERS.register("video")
class VideoItems(nn.Module):
  cfg: Any
  dtype: Any = jnp.float32
  check_config = staticmethod(video.check_config)
  flops_tokens = staticmethod(video.flops_tokens)

  @nn.compact
  def __call__(self, inputs, deterministic=True):
    # frames [B, N, F, H, W, 3] -> [B, N, num_vectors, width]; invalid clips as zeros
    return video.VideoEncoder(self.cfg, self.dtype, name="video")(
        valid_only(inputs["frames"], inputs), deterministic)
