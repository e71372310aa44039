"""GPT-2 <-> our Decoder (`params['decoder']`).

Our decoder equals GPT-2 with norm='pre', positions='learned', use_bias=True,
activation='gelu_new' (GPT-2's default) and tied embeddings. GPT-2's Conv1D
weights are already [in, out]; `c_attn` packs q, k, v along the output axis.
Export back writes config.json + model.safetensors that
`transformers.GPT2LMHeadModel.from_pretrained` loads; the mapping is pure
reshapes and splits, so ours -> GPT-2 -> ours is bit-exact.
"""
from __future__ import annotations

import flax.linen as nn
import numpy as np

from metalm_jax import presets
from metalm_jax.convert import hf_common as hc
from metalm_jax.convert import hf_io
from metalm_jax.models import layout


def _ln(tree):
  return tree["scale"], tree["bias"]


@hc.CONVERTERS.register("gpt2")
class Gpt2:
  component = "decoder"
  anchor = "wte.weight"

  @staticmethod
  def section(hf_cfg):
    c = hf_cfg
    hc.require(c.n_embd % c.n_head == 0, "n_head", c.n_head, f"does not divide n_embd={c.n_embd}")
    hc.require(c.scale_attn_weights, "scale_attn_weights", c.scale_attn_weights,
               "our attention always scales by 1/sqrt(head_dim)")
    hc.require(not c.scale_attn_by_inverse_layer_idx, "scale_attn_by_inverse_layer_idx",
               c.scale_attn_by_inverse_layer_idx, "not supported by our decoder")
    hc.require(not getattr(c, "add_cross_attention", False), "add_cross_attention",
               c.add_cross_attention, "MetaLM docks instead of cross-attending")
    return presets.decoder(
        vocab_size=c.vocab_size, num_layers=c.n_layer, emb_dim=c.n_embd, num_heads=c.n_head,
        head_dim=0, mlp_dim=c.n_inner or 4 * c.n_embd,
        activation=hc.activation(c.activation_function, "activation_function"), norm="pre",
        positions="learned", max_len=c.n_positions, use_bias=True, ln_eps=c.layer_norm_epsilon,
        tie_embeddings=bool(getattr(c, "tie_word_embeddings", True)), dropout=0.0)

  @staticmethod
  def params(get, section, hf_cfg=None):
    emb, heads = section.emb_dim, section.num_heads
    tree = {
        "embedder": {"embedding": get("wte.weight")},
        "pos_embedding": get("wpe.weight"),
        "final_norm": hc.layer_norm(get, "ln_f"),
    }
    for i in range(section.num_layers):
      p = f"h.{i}"
      qkv_w = get(f"{p}.attn.c_attn.weight", (emb, 3 * emb))
      qkv_b = get(f"{p}.attn.c_attn.bias", (3 * emb,))
      (qw, kw, vw), (qb, kb, vb) = np.split(qkv_w, 3, axis=1), np.split(qkv_b, 3)
      tree[f"layers_{i}"] = {
          "attn": hc.attention(qw, qb, kw, kb, vw, vb, get(f"{p}.attn.c_proj.weight"),
                               get(f"{p}.attn.c_proj.bias"), heads),
          "ln_attn": hc.layer_norm(get, f"{p}.ln_1"),
          "ln_mlp": hc.layer_norm(get, f"{p}.ln_2"),
          "mlp": {"wi": hc.dense(get(f"{p}.mlp.c_fc.weight"), get(f"{p}.mlp.c_fc.bias")),
                  "wo": hc.dense(get(f"{p}.mlp.c_proj.weight"), get(f"{p}.mlp.c_proj.bias"))},
      }
    if not section.tie_embeddings:
      tree["lm_head"] = {"kernel": get.absolute("lm_head.weight").T}
    return tree

  @staticmethod
  def random_inputs(section, rng: np.random.Generator, batch: int, hf_cfg=None):
    s = min(32, section.max_len)
    return {"tokens": rng.integers(0, section.vocab_size, (batch, s)).astype(np.int32)}

  run_ours = staticmethod(hc.decoder_logits)

  @staticmethod
  def run_hf(model_dir, inputs):
    import torch
    from transformers import GPT2LMHeadModel
    model = GPT2LMHeadModel.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
      out = model(input_ids=torch.from_numpy(inputs["tokens"].astype(np.int64)))
    return out.logits.numpy(), np.ones(inputs["tokens"].shape, bool)


def gpt2_config(section) -> dict:
  """HF GPT2Config fields for our decoder section; raises naming the field
  that GPT-2 cannot express."""
  def need(cond, field, why):
    if not cond:
      raise ValueError(f"model.decoder.{field}={section.get(field)!r}: {why}")
  need(section.norm == "pre", "norm", "GPT-2 is pre-LN")
  need(section.positions == "learned", "positions", "GPT-2 uses learned positions")
  need(section.get("use_bias", True), "use_bias", "GPT-2 has biases")
  need(section.activation in hc.OUR_TO_HF_ACTIVATION, "activation",
       f"no HF name; known: {sorted(hc.OUR_TO_HF_ACTIVATION)}")
  need(section.emb_dim % section.num_heads == 0, "num_heads", "must divide emb_dim")
  need(section.get("head_dim", 0) in (0, section.emb_dim // section.num_heads), "head_dim",
       "GPT-2 needs head_dim = emb_dim / num_heads")
  need(section.get("norm_type", "layer") == "layer", "norm_type", "GPT-2 uses LayerNorm")
  need(section.get("mlp", "dense") == "dense", "mlp", "GPT-2's MLP is not gated")
  need(section.get("num_kv_heads", 0) in (0, section.num_heads), "num_kv_heads",
       "GPT-2 has one key/value head per query head")
  need(not section.get("qkv_bias", False) or section.get("use_bias", True), "qkv_bias",
       "GPT-2 has biases on every projection or none")
  need(section.get("embed_scale", 1.0) == 1.0, "embed_scale", "GPT-2 does not scale embeddings")
  return {
      "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
      "vocab_size": section.vocab_size, "n_positions": section.max_len,
      "n_embd": section.emb_dim, "n_layer": section.num_layers, "n_head": section.num_heads,
      "n_inner": section.mlp_dim,
      "activation_function": hc.OUR_TO_HF_ACTIVATION[section.activation],
      "layer_norm_epsilon": section.ln_eps, "tie_word_embeddings": bool(section.tie_embeddings),
      "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0,
      "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
      "reorder_and_upcast_attn": False, "add_cross_attention": False,
      "initializer_range": 0.02, "use_cache": True, "bos_token_id": None, "eos_token_id": None,
  }


def decoder_to_gpt2(section, tree) -> dict:
  """Our decoder params (unboxed numpy; unrolled or scanned layout) -> GPT-2
  state dict (HF names)."""
  tree = layout.unstack(tree)
  emb = section.emb_dim
  sd = {"transformer.wte.weight": tree["embedder"]["embedding"],
        "transformer.wpe.weight": tree["pos_embedding"]}
  sd["transformer.ln_f.weight"], sd["transformer.ln_f.bias"] = _ln(tree["final_norm"])
  for i in range(section.num_layers):
    layer, p = tree[f"layers_{i}"], f"transformer.h.{i}"
    a = layer["attn"]
    sd[f"{p}.attn.c_attn.weight"] = np.concatenate(
        [a[n]["kernel"].reshape(emb, -1) for n in ("query", "key", "value")], axis=1)
    sd[f"{p}.attn.c_attn.bias"] = np.concatenate(
        [a[n]["bias"].reshape(-1) for n in ("query", "key", "value")])
    sd[f"{p}.attn.c_proj.weight"] = a["out"]["kernel"].reshape(-1, emb)
    sd[f"{p}.attn.c_proj.bias"] = a["out"]["bias"]
    sd[f"{p}.ln_1.weight"], sd[f"{p}.ln_1.bias"] = _ln(layer["ln_attn"])
    sd[f"{p}.ln_2.weight"], sd[f"{p}.ln_2.bias"] = _ln(layer["ln_mlp"])
    sd[f"{p}.mlp.c_fc.weight"] = layer["mlp"]["wi"]["kernel"]
    sd[f"{p}.mlp.c_fc.bias"] = layer["mlp"]["wi"]["bias"]
    sd[f"{p}.mlp.c_proj.weight"] = layer["mlp"]["wo"]["kernel"]
    sd[f"{p}.mlp.c_proj.bias"] = layer["mlp"]["wo"]["bias"]
  if not section.tie_embeddings:
    sd["lm_head.weight"] = tree["lm_head"]["kernel"].T
  return {k: np.ascontiguousarray(np.asarray(v, np.float32)) for k, v in sd.items()}


def save_gpt2(out_dir: str, section, tree) -> str:
  """Writes an HF GPT-2 model dir (config.json + model.safetensors)."""
  cfg = gpt2_config(section)
  return hf_io.write_hf_dir(out_dir, cfg, decoder_to_gpt2(section, nn.meta.unbox(tree)))


@hc.HF_DECODER_FORMATS.register("gpt2")
class Gpt2Format:
  """Export of our decoder as GPT2LMHeadModel (convert/hf_export.py)."""
  hf_config = staticmethod(gpt2_config)
  state_dict = staticmethod(decoder_to_gpt2)
