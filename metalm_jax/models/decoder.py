"""The causal interface decoder (the universal task layer), with a KV cache."""
from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax.numpy as jnp

from metalm_jax.models import layers, stack
from metalm_jax.models import lora as lora_lib

POSITION_SCHEMES = ("learned", "sinusoidal", "rotary")


def segment_mask(segment_ids) -> layers.Segments:
  """Query t may see key s of the same segment (packing; padding is segment
  0), as ids (`.dense()`: bool [B, 1, L, L]). Attention adds causality itself."""
  return layers.Segments.packed(segment_ids)


class Decoder(nn.Module):
  """Pre-LN / DeepNorm causal Transformer with tied (or untied) output embedding.

  cfg: the `model.decoder` config section (FrozenConfigDict). Besides the
  GPT-2 shape (the presets.decoder defaults) it takes the Llama / Qwen2 /
  Gemma family fields (norm_type, mlp, num_kv_heads, qkv_bias, rope_theta,
  rope_scaling, embed_scale; metalm_jax/presets.py, decoder families).

  `embed_scale` (Gemma: sqrt(emb_dim)) multiplies the token embeddings in
  `embed`, in the compute dtype as HF's GemmaTextScaledWordEmbedding does
  (bfloat16 rounds sqrt(2048) to 45.25). MetaLM replaces docked positions
  after `embed`, so connector outputs are not scaled: as in HF's
  Gemma-based VLMs (PaliGemma), text embeddings are scaled, image ones not.
  The tied output head uses the unscaled table.

  `lora` (metalm_jax/models/lora.py): low-rank adapters on the projections
  of every layer that `lora.targets` names, when `lora.enabled`; embeddings,
  norms and the head have none.
  """
  cfg: Any
  dtype: Any = jnp.float32

  def setup(self):
    cfg = self.cfg
    if cfg.positions not in POSITION_SCHEMES:
      raise ValueError(f"model.decoder.positions={cfg.positions!r}; "
                       f"expected one of {POSITION_SCHEMES}")
    init = nn.initializers.normal(0.02)
    self.embedder = nn.Embed(cfg.vocab_size, cfg.emb_dim, dtype=self.dtype, param_dtype=jnp.float32,
                             embedding_init=layers.param_init(init, ("vocab", "embed")))
    if cfg.positions == "learned":
      self.pos_embedding = self.param("pos_embedding", layers.param_init(init, ("length", "embed")),
                                      (cfg.max_len, cfg.emb_dim))
    self.blocks = stack.build(cfg, self.dtype, causal=True, rotary=cfg.positions == "rotary",
                              field="model.decoder", lora=lora_lib.from_section(cfg.get("lora")))
    if cfg.norm == "pre":
      norm = layers.NORM_TYPES.get(cfg.get("norm_type", "layer"))
      self.final_norm = norm(cfg.ln_eps, self.dtype)
    self.embed_dropout = nn.Dropout(cfg.get("dropout", 0.0))
    if not cfg.tie_embeddings:
      self.lm_head = nn.Dense(cfg.vocab_size, use_bias=False, dtype=self.dtype,
                              param_dtype=jnp.float32,
                              kernel_init=layers.param_init(init, ("embed", "vocab")))

  def embed(self, tokens):
    """Token embeddings [B, T, emb] in the compute dtype, times embed_scale."""
    x = self.embedder(tokens)
    scale = self.cfg.get("embed_scale", 1.0)
    if scale != 1.0:
      x = x * jnp.asarray(scale, self.dtype)
    return x

  def __call__(self, tokens, positions, segment_ids, input_embeds: Optional[Any] = None,
               decode: bool = False, deterministic: bool = True):
    """Returns float32 logits [B, T, vocab].

    In decode mode the call appends T positions to the KV cache; `segment_ids`
    then only marks real (non-zero) vs padding keys.
    """
    x = self.hidden_states(tokens, positions, segment_ids, input_embeds, decode, deterministic)
    return self.head(x).astype(jnp.float32)

  def hidden_states(self, tokens, positions, segment_ids, input_embeds: Optional[Any] = None,
                    decode: bool = False, deterministic: bool = True):
    """The final hidden states [B, T, emb] (after the final norm), compute dtype:
    what `head` turns into logits. Arguments as `__call__`."""
    cfg = self.cfg
    x = self.embed(tokens) if input_embeds is None else input_embeds.astype(self.dtype)
    # Positional information is added after docking replaced some inputs.
    if cfg.positions == "learned":
      x = x + jnp.take(self.pos_embedding, positions, axis=0).astype(self.dtype)
    elif cfg.positions == "sinusoidal":
      table = jnp.asarray(layers.sinusoidal_table(cfg.max_len, cfg.emb_dim))
      x = x + jnp.take(table, positions, axis=0).astype(self.dtype)
    if cfg.get("dropout", 0.0):
      x = self.embed_dropout(x, deterministic=deterministic)
    x = layers.constrain(x, ("act_batch", "act_length", "act_embed"))
    mask = None if decode else segment_mask(segment_ids)
    x = stack.apply(self.blocks, x, mask, positions, segment_ids != 0, decode, deterministic)
    if cfg.norm == "pre":
      x = self.final_norm(x)
    return x

  def head(self, x):
    """The output head: logits [B, T, vocab] in the compute dtype from hidden
    states [B, T, emb] (the tied, unscaled embedding table or `lm_head`)."""
    if self.cfg.tie_embeddings:
      logits = self.embedder.attend(x)
    else:
      logits = self.lm_head(x)
    return layers.constrain(logits, ("act_batch", "act_length", "act_vocab"))
