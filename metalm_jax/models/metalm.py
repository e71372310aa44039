"""MetaLM: non-causal encoders docked one-to-one onto a causal decoder.

The connector output for element j of a span replaces the decoder's input
embedding at that span's j-th position; the batch says where through
`dock_index` / `dock_mask` (see metalm_jax/batch.py). No cross-attention.
Each encoder is its modality's module (models/modalities/), chosen by
`model.encoders.<name>.type`.
"""
from __future__ import annotations

from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from metalm_jax.models import contract, layers, modalities
from metalm_jax.models import lora as lora_lib
from metalm_jax.models import remat as remat_lib
from metalm_jax.models import rotary as rotary_lib
from metalm_jax.models.connector import CONNECTORS
from metalm_jax.models.decoder import Decoder


class MetaLM(nn.Module):
  """cfg: the `model` config section, frozen (see `build_model`)."""
  cfg: Any

  def setup(self):
    cfg = self.cfg
    dtype = jnp.dtype(cfg.dtype)
    self.decoder = Decoder(cfg.decoder, dtype)
    names = sorted(cfg.encoders)
    self.encoders = {n: modalities.by_encoder_type(cfg.encoders[n].type).encoder(
        cfg.encoders[n], dtype) for n in names}
    self.connectors = {
        n: CONNECTORS.get(cfg.encoders[n].connector.type)(
            cfg.encoders[n].connector, cfg.decoder.emb_dim, dtype) for n in names}

  def dock_vectors(self, encoder_inputs: Mapping[str, Any], deterministic=True):
    """Flattened connector outputs [B, E, emb] in the contract's order."""
    outs = []
    for name in sorted(self.cfg.encoders):
      v = self.encoders[name](encoder_inputs[name], deterministic)  # [B, N, T, w]
      expect = modalities.slot_length(self.cfg.encoders[name])
      if v.shape[2] != expect:
        raise ValueError(f"encoder {name!r} emits {v.shape[2]} vectors per item, "
                         f"batch contract expects {expect}")
      v = self.connectors[name](v)
      outs.append(v.reshape(v.shape[0], -1, v.shape[-1]))
    return jnp.concatenate(outs, axis=1)

  def input_embeddings(self, batch, deterministic=True):
    """Decoder input embeddings with docked positions replaced."""
    x = self.decoder.embed(batch["tokens"])
    if self.cfg.encoders and "dock_mask" in batch:
      flat = self.dock_vectors(batch["encoders"], deterministic)
      gathered = jnp.take_along_axis(flat, batch["dock_index"][..., None], axis=1)
      x = jnp.where(batch["dock_mask"][..., None], gathered.astype(x.dtype), x)
    return layers.constrain(x, ("act_batch", "act_length", "act_embed"))

  def __call__(self, batch, decode: bool = False, deterministic: bool = True):
    """Logits [B, L, vocab] (float32). In decode mode, appends to the KV cache."""
    x = self.input_embeddings(batch, deterministic)
    return self.decoder(batch["tokens"], batch["positions"], batch["segment_ids"],
                        input_embeds=x, decode=decode, deterministic=deterministic)

  def hidden_states(self, batch, deterministic: bool = True):
    """The decoder's final hidden states [B, L, emb] (compute dtype) for a
    training / eval batch: `__call__` without the output head."""
    x = self.input_embeddings(batch, deterministic)
    return self.decoder.hidden_states(batch["tokens"], batch["positions"], batch["segment_ids"],
                                      input_embeds=x, deterministic=deterministic)

  def head(self, hidden):
    """Logits [..., T, vocab] in the compute dtype from `hidden_states` (or a
    chunk of its positions)."""
    return self.decoder.head(hidden)

  def decode_tokens(self, tokens, positions, segment_ids):
    """One KV-cache step on plain tokens (no docking): logits [B, T, vocab]."""
    return self.decoder(tokens, positions, segment_ids, decode=True)


def check_decoder_family_fields(d, field: str) -> None:
  """Checks the family fields of a decoder section (presets.decoder)."""
  def need(cond, name, why):
    if not cond:
      raise ValueError(f"{field}.{name}={d.get(name)!r}: {why}")
  need(d.get("norm_type", "layer") in layers.NORM_TYPES, "norm_type",
       f"expected one of {list(layers.NORM_TYPES)}")
  need(d.get("mlp", "dense") in layers.MLP_KINDS, "mlp",
       f"expected one of {list(layers.MLP_KINDS)}")
  kv = d.get("num_kv_heads", 0)
  need(isinstance(kv, int) and kv >= 0 and d.num_heads % (kv or d.num_heads) == 0,
       "num_kv_heads", f"must be 0 (= num_heads) or divide num_heads={d.num_heads}")
  need(d.get("embed_scale", 1.0) > 0, "embed_scale", "must be > 0")
  need(d.get("rope_theta", 10000.0) > 0, "rope_theta", "must be > 0")
  scaling = d.get("rope_scaling") or {}
  need(not scaling or d.positions == "rotary", "rope_scaling",
       f"needs positions='rotary' (positions={d.positions!r})")
  rotary_lib.check(scaling.to_dict() if hasattr(scaling, "to_dict") else dict(scaling),
                   f"{field}.rope_scaling")
  head_dim = d.get("head_dim", 0) or d.emb_dim // d.num_heads
  need(d.positions != "rotary" or head_dim % 2 == 0, "head_dim",
       f"rotary positions need an even head_dim (got {head_dim})")


def check_model_config(cfg) -> None:
  """Semantic checks that ConfigDict typing cannot express; names the field."""
  def need(cond, field, value, why):
    if not cond:
      raise ValueError(f"{field}={value!r}: {why}")
  def stack_options(section, field):
    remat_lib.policy_name(section, field)
    impl = section.get("attention_impl", "auto")
    need(impl is None or impl in layers.ATTENTION_IMPLS, field + ".attention_impl", impl,
         f"expected one of {layers.ATTENTION_IMPLS}")
    need(isinstance(section.get("scan_layers", False), bool), field + ".scan_layers",
         section.get("scan_layers"), "expected a bool")

  d = cfg.decoder
  need(d.emb_dim % d.num_heads == 0 or d.get("head_dim", 0), "model.decoder.num_heads",
       d.num_heads, f"does not divide emb_dim={d.emb_dim}")
  need(d.norm in layers.NORM_STYLES, "model.decoder.norm", d.norm, f"expected {layers.NORM_STYLES}")
  check_decoder_family_fields(d, "model.decoder")
  chunk = d.get("loss_chunk", 0)
  need(isinstance(chunk, int) and not isinstance(chunk, bool) and chunk >= 0,
       "model.decoder.loss_chunk", chunk, "positions per loss chunk: an int >= 0 (0 = off)")
  lora_lib.check(d, "model.decoder")
  stack_options(d, "model.decoder")
  for name, e in cfg.encoders.items():
    f = f"model.encoders.{name}"
    stack_options(e, f)
    types = modalities.encoder_types()
    need(e.type in types, f + ".type", e.type, f"known: {sorted(types)}")
    need(e.connector.type in CONNECTORS, f + ".connector.type", e.connector.type,
         f"known: {list(CONNECTORS)}")
    need(e.emb_dim % e.num_heads == 0, f + ".num_heads", e.num_heads,
         f"does not divide emb_dim={e.emb_dim}")
    need(e.max_items >= 1, f + ".max_items", e.max_items, "must be >= 1")
    modalities.slot_length(e)
    check = modalities.by_encoder_type(e.type).check_config
    if check is not None:
      check(e, f)


def build_model(model_cfg) -> MetaLM:
  """MetaLM from a `model` ConfigDict (checked, then frozen so it is hashable)."""
  check_model_config(model_cfg)
  if not isinstance(model_cfg, ml_collections.FrozenConfigDict):
    model_cfg = ml_collections.FrozenConfigDict(model_cfg)
  return MetaLM(model_cfg)


# Init runs once: compile it cheaply. On CPU, XLA's default optimisation of the
# initialisers (one RNG per param) takes 5x longer to compile than this.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def _dummy(model: MetaLM, batch_size: int, seq_len: int):
  return jax.tree.map(jnp.asarray, contract.dummy_batch(model.cfg, batch_size, seq_len))


def init_variables(model: MetaLM, rng, batch_size: int = 1, seq_len: int = 8):
  """Initialises params from a dummy batch of the contract's shapes (a
  top-level call: it compiles its own jit)."""
  return jax.jit(model.init, compiler_options=FAST_COMPILE)(rng, _dummy(model, batch_size, seq_len))


def abstract_variables(model: MetaLM, batch_size: int = 1, seq_len: int = 8):
  """Shapes of the variables without allocating them (jax.eval_shape)."""
  dummy = _dummy(model, batch_size, seq_len)
  return jax.eval_shape(lambda: model.init(jax.random.key(0), dummy))


def count_params(tree) -> int:
  leaves = jax.tree.leaves(nn.meta.unbox(tree))
  return int(sum(np.prod(x.shape) for x in leaves))
