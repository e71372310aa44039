"""Decoder families: the `model.decoder` fields that make a GPT-2, Llama,
Qwen2 or Gemma shaped interface decoder.

    decoder_family("llama", num_layers=16, emb_dim=2048, ...)  -> ConfigDict

Each family is presets.decoder() (tiny sizes) with the family's fields set;
keyword arguments override any field. What each family is, as HF defines it:

- gpt2: LayerNorm, learned positions, GELU (tanh) MLP, biases, tied head.
- llama: RMSNorm (weight * normed), rotary positions (rope_theta, optional
  Llama-3 rope_scaling), SwiGLU MLP, grouped-query attention (num_kv_heads),
  no biases, untied head.
- qwen2: Llama plus q/k/v biases (qkv_bias); head tied or not.
- gemma: RMSNorm with (1 + weight), GeGLU with tanh-approximated GELU,
  token embeddings times sqrt(emb_dim) (embed_scale), tied head, head_dim
  independent of emb_dim / num_heads.

HF import / export of these: metalm_jax/convert/hf_llama_like.py.
"""
from __future__ import annotations

from metalm_jax import presets
from metalm_jax.registry import Registry

FAMILIES = Registry("decoder family")


@FAMILIES.register("gpt2")
def gpt2(**kw):
  return presets.decoder(**{"activation": "gelu_new", **kw})


def _llama_fields(**kw):
  fields = dict(norm_type="rms", mlp="gated", activation="silu", positions="rotary",
                use_bias=False, qkv_bias=False, tie_embeddings=False, ln_eps=1e-5,
                rope_theta=500000.0, num_kv_heads=2)
  fields.update(kw)
  return fields


@FAMILIES.register("llama")
def llama(**kw):
  return presets.decoder(**_llama_fields(**kw))


@FAMILIES.register("qwen2")
def qwen2(**kw):
  return presets.decoder(**_llama_fields(**{"qkv_bias": True, "ln_eps": 1e-6,
                                            "rope_theta": 1000000.0, **kw}))


@FAMILIES.register("gemma")
def gemma(**kw):
  """Tiny default: 4 query heads of head_dim 32 over emb_dim 64, one kv head
  (Gemma-2B is multi-query). embed_scale follows the final emb_dim unless given."""
  fields = dict(norm_type="rms_plus_one", mlp="gated", activation="gelu_tanh",
                positions="rotary", use_bias=False, qkv_bias=False, tie_embeddings=True,
                ln_eps=1e-6, rope_theta=10000.0, num_kv_heads=1, head_dim=32)
  fields.update(kw)
  emb_dim = fields.get("emb_dim", presets.decoder().emb_dim)
  fields.setdefault("embed_scale", float(emb_dim) ** 0.5)
  return presets.decoder(**fields)


def decoder_family(name: str, **kw):
  """The `model.decoder` section of family `name` (FAMILIES), fields overridden by kw."""
  return FAMILIES.get(name)(**kw)
