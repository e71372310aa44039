"""Bidirectional language encoder of BERT / RoBERTa shape."""
from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax.numpy as jnp

from metalm_jax.models import layers, stack


class TextEncoder(nn.Module):
  """Word + learned position + token-type embeddings, then post-LN (BERT) or
  pre-LN layers. Returns every token's state [B, S, emb_dim].

  cfg: an encoder config section (vocab_size, emb_dim, num_layers, num_heads,
  mlp_dim, activation, norm, ln_eps, max_positions, type_vocab_size, dropout).
  """
  cfg: Any
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, tokens, mask, token_types: Optional[Any] = None, deterministic=True):
    cfg = self.cfg
    s = tokens.shape[-1]
    if s > cfg.max_positions:
      raise ValueError(f"text encoder input length {s} > max_positions={cfg.max_positions}")
    init = nn.initializers.normal(0.02)
    x = nn.Embed(cfg.vocab_size, cfg.emb_dim, dtype=self.dtype, param_dtype=jnp.float32,
                 embedding_init=layers.param_init(init, ("vocab", "embed")),
                 name="word_embeddings")(tokens)
    pos = self.param("position_embeddings", layers.param_init(init, ("length", "embed")),
                     (cfg.max_positions, cfg.emb_dim))
    types = self.param("type_embeddings", layers.param_init(init, (None, "embed")),
                       (cfg.type_vocab_size, cfg.emb_dim))
    token_types = jnp.zeros_like(tokens) if token_types is None else token_types
    x = x + pos[:s].astype(self.dtype) + jnp.take(types, token_types, axis=0).astype(self.dtype)
    if cfg.norm != "pre":
      x = layers.LayerNorm(cfg.ln_eps, self.dtype, name="embed_norm")(x)
    if cfg.get("dropout", 0.0):
      x = nn.Dropout(cfg.dropout)(x, deterministic=deterministic)
    blocks = stack.build(cfg, self.dtype, field="model.encoders.<text>")
    x = stack.apply(blocks, x, layers.Segments.key_padding(mask), deterministic=deterministic)
    if cfg.norm == "pre":
      x = layers.LayerNorm(cfg.ln_eps, self.dtype, name="final_norm")(x)
    return x
