"""BERT and RoBERTa -> our TextEncoder (`params['encoders_<name>']['bert']`).

Both are post-LN with an embedding LayerNorm. RoBERTa numbers positions from
padding_idx + 1, so its position table is sliced to start there; our encoder
then numbers real tokens 0, 1, ... (right padding). Outputs at padding
positions differ (they see other position vectors) and are not compared.
"""
from __future__ import annotations

import numpy as np

from metalm_jax import presets
from metalm_jax.convert import hf_common as hc


class _BertLike:
  component = "text"
  anchor = "embeddings.word_embeddings.weight"

  @classmethod
  def _offset(cls, hf_cfg):
    return 0

  @classmethod
  def section(cls, hf_cfg):
    c = hf_cfg
    pos_type = getattr(c, "position_embedding_type", "absolute") or "absolute"
    hc.require(pos_type == "absolute", "position_embedding_type", pos_type,
               "only absolute positions map onto our encoder")
    hc.require(c.hidden_size % c.num_attention_heads == 0, "num_attention_heads",
               c.num_attention_heads, f"does not divide hidden_size={c.hidden_size}")
    max_pos = c.max_position_embeddings - cls._offset(c)
    hc.require(max_pos > 0, "max_position_embeddings", c.max_position_embeddings,
               f"leaves no positions after offset {cls._offset(c)}")
    return presets.bert(
        vocab_size=c.vocab_size, num_layers=c.num_hidden_layers, emb_dim=c.hidden_size,
        num_heads=c.num_attention_heads, mlp_dim=c.intermediate_size,
        activation=hc.activation(c.hidden_act, "hidden_act"), norm="post",
        ln_eps=c.layer_norm_eps, max_positions=max_pos, type_vocab_size=c.type_vocab_size,
        max_len=min(max_pos, 16), head_dim=0, use_bias=True,
        dropout=0.0)

  @classmethod
  def params(cls, get, section, hf_cfg):
    off = cls._offset(hf_cfg)
    pos = get("embeddings.position_embeddings.weight")
    bert = {
        "word_embeddings": {"embedding": get("embeddings.word_embeddings.weight")},
        "position_embeddings": pos[off:off + section.max_positions],
        "type_embeddings": get("embeddings.token_type_embeddings.weight"),
        "embed_norm": hc.layer_norm(get, "embeddings.LayerNorm"),
    }
    for i in range(section.num_layers):
      p = f"encoder.layer.{i}"
      s = f"{p}.attention.self"
      bert[f"layers_{i}"] = {
          "attn": hc.attention(*hc.linear(get, f"{s}.query"), *hc.linear(get, f"{s}.key"),
                               *hc.linear(get, f"{s}.value"),
                               *hc.linear(get, f"{p}.attention.output.dense"),
                               section.num_heads),
          "ln_attn": hc.layer_norm(get, f"{p}.attention.output.LayerNorm"),
          "ln_mlp": hc.layer_norm(get, f"{p}.output.LayerNorm"),
          "mlp": {"wi": hc.dense(*hc.linear(get, f"{p}.intermediate.dense")),
                  "wo": hc.dense(*hc.linear(get, f"{p}.output.dense"))},
      }
    return {"bert": bert}

  @classmethod
  def random_inputs(cls, section, rng: np.random.Generator, batch: int, hf_cfg=None):
    """Right-padded random ids; row b has a random length >= 1. Ids avoid the
    pad id so RoBERTa numbers every real token."""
    s = min(32, section.max_positions)
    pad = getattr(hf_cfg, "pad_token_id", None)
    pad = 0 if pad is None else pad
    tokens = rng.integers(0, section.vocab_size, (batch, s), dtype=np.int64)
    tokens = np.where(tokens == pad, (pad + 1) % section.vocab_size, tokens)
    lengths = rng.integers(1, s + 1, batch)
    lengths[0] = s
    mask = np.arange(s)[None, :] < lengths[:, None]
    tokens = np.where(mask, tokens, pad)
    return {"tokens": tokens.astype(np.int32), "mask": mask}

  @staticmethod
  def run_ours(section, tree, inputs):
    import jax
    import ml_collections
    from metalm_jax.models.text_encoder import TextEncoder
    model = TextEncoder(ml_collections.FrozenConfigDict(section))
    out = jax.jit(model.apply)({"params": tree["bert"]}, inputs["tokens"], inputs["mask"])
    return np.asarray(out)

  hf_class = "BertModel"

  @classmethod
  def run_hf(cls, model_dir, inputs):
    import torch
    import transformers
    model = getattr(transformers, cls.hf_class).from_pretrained(
        model_dir, dtype=torch.float32, add_pooling_layer=False).eval()
    with torch.no_grad():
      out = model(input_ids=torch.from_numpy(inputs["tokens"].astype(np.int64)),
                  attention_mask=torch.from_numpy(inputs["mask"].astype(np.int64)))
    return out.last_hidden_state.numpy(), inputs["mask"]


@hc.CONVERTERS.register("bert")
class Bert(_BertLike):
  hf_class = "BertModel"


@hc.CONVERTERS.register("roberta")
class Roberta(_BertLike):
  hf_class = "RobertaModel"

  @classmethod
  def _offset(cls, hf_cfg):
    hc.require(hf_cfg.pad_token_id is not None, "pad_token_id", None,
               "RoBERTa positions start at pad_token_id + 1")
    return hf_cfg.pad_token_id + 1
