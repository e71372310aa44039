"""Text spans: a BERT/RoBERTa-shaped bidirectional encoder (encoder type
"bert"), one vector per span token. Spans are laid out by the pipeline's span
code (data/spans.py) and the evaluators' EncodedText parts, not docked whole."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from metalm_jax import presets
from metalm_jax.models.modalities import base
from metalm_jax.models.text_encoder import TextEncoder


class TextItems(nn.Module):
  """Spans tokens [B, N, S] (mask True = real token) -> [B, N, S, width]."""
  cfg: Any
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, inputs, deterministic=True):
    tokens, mask = inputs["tokens"], inputs["mask"]  # [B, N, S]
    b, n, s = tokens.shape
    out = TextEncoder(self.cfg, self.dtype, name="bert")(
        tokens.reshape(b * n, s), mask.reshape(b * n, s), deterministic=deterministic)
    return out.reshape(b, n, s, -1)


def inputs(cfg, b):
  """tokens int32 [B, N, S], mask bool [B, N, S] (True = real token)."""
  shape = (b, cfg.max_items, cfg.max_len)
  return {"tokens": (shape, np.int32), "mask": (shape, np.bool_)}


TEXT = base.register(base.Modality(
    name="text", encoder_type="bert", encoder=TextItems, preset=presets.bert, inputs=inputs,
    slot_length=lambda cfg: cfg.max_len, key="tokens"))
