"""Llama, Qwen2 and Gemma <-> our Decoder (`params['decoder']`), both ways.

The three HF models share one layout (model.embed_tokens, per layer
self_attn.{q,k,v,o}_proj, mlp.{gate,up,down}_proj, input_layernorm,
post_attention_layernorm; model.norm, lm_head); what differs is data in
`Family`: the norm (Gemma's weight is applied as 1 + w and stored as is),
which projections carry biases, the embedding scale and the HF fields that
must hold a fixed value. torch Linear weights [out, in] become our
[in, heads, head_dim] / [heads, head_dim, out] kernels by transposes and
reshapes only, so ours -> HF -> ours is bit-exact.

Refused (ValueError naming the HF field and value): rope types other than
default / llama3, partial rotary, Qwen2 layers with sliding-window attention,
Llama attention_bias != mlp_bias (our use_bias covers both), Gemma
attention_bias or bidirectional attention, and the model type gemma2
(logit soft-capping, sliding-window layers).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Dict, Tuple

import numpy as np

from metalm_jax import presets
from metalm_jax.convert import hf_common as hc
from metalm_jax.models import layout
from metalm_jax.models import rotary


@dataclasses.dataclass(frozen=True)
class Family:
  """What sets one family apart (the rest of the mapping is shared)."""
  name: str                 # our family name = HF model_type
  architecture: str         # HF class written into an export's config.json
  norm_type: str            # our norm_type
  embed_scaled: bool        # token embeddings times sqrt(hidden_size)
  # How HF decides biases: "attention_mlp_bias" (Llama: attention_bias and
  # mlp_bias fields), "qkv" (Qwen2: always on q/k/v only), "attention_bias"
  # (Gemma: the field, which we accept only False).
  biases: str
  # Extra config.json fields of an export.
  export_fields: Tuple[Tuple[str, Any], ...] = ()
  # (HF field, is_refused(value), why) checked on import.
  refusals: Tuple[Tuple[str, Callable[[Any], bool], str], ...] = ()


def _sliding_layers(c) -> bool:
  return "sliding_attention" in (getattr(c, "layer_types", None) or [])


LLAMA = Family("llama", "LlamaForCausalLM", "rms", False, "attention_mlp_bias",
               export_fields=(("pretraining_tp", 1),))
QWEN2 = Family("qwen2", "Qwen2ForCausalLM", "rms", False, "qkv",
               export_fields=(("use_sliding_window", False), ("sliding_window", None)))
GEMMA = Family("gemma", "GemmaForCausalLM", "rms_plus_one", True, "attention_bias",
               refusals=(("use_bidirectional_attention", bool,
                          "our decoder is causal (bidirectional Gemma is an encoder)"),))


# ------------------------------------------------------------------ config in

def _rope_parameters(c) -> Dict[str, Any]:
  """HF's rope settings as one flat dict (transformers 5 `rope_parameters`;
  4.x configs' rope_theta / rope_scaling)."""
  rp = dict(getattr(c, "rope_parameters", None) or {})
  if not rp:
    rp = dict(getattr(c, "rope_scaling", None) or {})
    rp.setdefault("rope_theta", getattr(c, "rope_theta", rotary.DEFAULT_THETA))
  rp.setdefault("rope_type", rp.get("type", "default"))
  return rp


def rope_fields(c) -> Tuple[float, Dict[str, Any]]:
  """(rope_theta, rope_scaling) of our section from an HF config."""
  rp = _rope_parameters(c)
  kind = rp["rope_type"]
  supported = ["default"] + list(rotary.ROPE_SCALINGS)
  hc.require(kind in supported, "rope_parameters.rope_type (rope_scaling in older configs)",
             kind, f"supported: {supported}")
  partial = rp.get("partial_rotary_factor", getattr(c, "partial_rotary_factor", None))
  hc.require(partial in (None, 1, 1.0), "partial_rotary_factor", partial,
             "our rotary embedding rotates the whole head")
  if kind == "default":
    return float(rp["rope_theta"]), {}
  scaling = {"rope_type": kind}
  for f in rotary.SCALING_FIELDS[kind]:
    hc.require(rp.get(f) is not None, f"rope_parameters.{f}", rp.get(f),
               f"rope_type={kind!r} needs it")
    scaling[f] = rp[f]
  return float(rp["rope_theta"]), scaling


def _biases(fam: Family, c) -> Tuple[bool, bool]:
  """(use_bias, qkv_bias) of our section."""
  if fam.biases == "qkv":
    return False, True
  attn = bool(getattr(c, "attention_bias", False))
  if fam.biases == "attention_bias":
    hc.require(not attn, "attention_bias", attn, f"{fam.name} with biases is not supported")
    return False, False
  mlp = bool(getattr(c, "mlp_bias", False))
  hc.require(attn == mlp, "mlp_bias", mlp,
             f"must equal attention_bias={attn} (our use_bias sets both)")
  return attn, False


def section(fam: Family, c):
  """Our `model.decoder` section for HF config `c` of family `fam`."""
  for field, refused, why in fam.refusals:
    value = getattr(c, field, None)
    hc.require(not refused(value), field, value, why)
  if fam is QWEN2:
    hc.require(not _sliding_layers(c), "use_sliding_window", getattr(c, "use_sliding_window", None),
               f"sliding-window attention (sliding_window={getattr(c, 'sliding_window', None)}, "
               f"max_window_layers={getattr(c, 'max_window_layers', None)}) is not supported")
  theta, scaling = rope_fields(c)
  use_bias, qkv_bias = _biases(fam, c)
  head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
  return presets.decoder(
      vocab_size=c.vocab_size, num_layers=c.num_hidden_layers, emb_dim=c.hidden_size,
      num_heads=c.num_attention_heads, num_kv_heads=c.num_key_value_heads or c.num_attention_heads,
      head_dim=head_dim, mlp_dim=c.intermediate_size,
      activation=hc.activation(c.hidden_act, "hidden_act"), norm="pre", norm_type=fam.norm_type,
      mlp="gated", positions="rotary", max_len=c.max_position_embeddings, use_bias=use_bias,
      qkv_bias=qkv_bias, ln_eps=c.rms_norm_eps, tie_embeddings=bool(c.tie_word_embeddings),
      rope_theta=theta, rope_scaling=scaling,
      embed_scale=float(c.hidden_size) ** 0.5 if fam.embed_scaled else 1.0, dropout=0.0)


def _shape(section):
  """(emb_dim, heads, kv heads, head_dim) of a decoder section."""
  e, h = section.emb_dim, section.num_heads
  return e, h, section.get("num_kv_heads", 0) or h, section.get("head_dim", 0) or e // h


def params(fam: Family, get, section, hf_cfg=None):
  """Our decoder params (unrolled) from the HF weights."""
  e, h, k, d = _shape(section)
  qkv_bias = section.use_bias or section.qkv_bias

  def heads_in(name, n):  # q/k/v: [n * d, e] -> [e, n, d]
    out = {"kernel": get(f"{name}.weight", (n * d, e)).T.reshape(e, n, d)}
    if qkv_bias:
      out["bias"] = get(f"{name}.bias", (n * d,)).reshape(n, d)
    return out

  def linear(name, n_out, n_in):
    out = {"kernel": get(f"{name}.weight", (n_out, n_in)).T}
    if section.use_bias:
      out["bias"] = get(f"{name}.bias", (n_out,))
    return out

  tree = {"embedder": {"embedding": get("embed_tokens.weight", (section.vocab_size, e))},
          "final_norm": {"scale": get("norm.weight", (e,))}}
  for i in range(section.num_layers):
    p = f"layers.{i}"
    a = f"{p}.self_attn"
    out = {"kernel": get(f"{a}.o_proj.weight", (e, h * d)).T.reshape(h, d, e)}
    if section.use_bias:
      out["bias"] = get(f"{a}.o_proj.bias", (e,))
    tree[f"layers_{i}"] = {
        "attn": {"query": heads_in(f"{a}.q_proj", h), "key": heads_in(f"{a}.k_proj", k),
                 "value": heads_in(f"{a}.v_proj", k), "out": out},
        "mlp": {"wi_gate": linear(f"{p}.mlp.gate_proj", section.mlp_dim, e),
                "wi_up": linear(f"{p}.mlp.up_proj", section.mlp_dim, e),
                "wo": linear(f"{p}.mlp.down_proj", e, section.mlp_dim)},
        "ln_attn": {"scale": get(f"{p}.input_layernorm.weight", (e,))},
        "ln_mlp": {"scale": get(f"{p}.post_attention_layernorm.weight", (e,))},
    }
  if not section.tie_embeddings:
    tree["lm_head"] = {"kernel": get.absolute("lm_head.weight").T}
  return tree


class Converter:
  """HF -> ours for one family (the interface of hc.CONVERTERS entries)."""
  component = "decoder"
  anchor = "embed_tokens.weight"

  def __init__(self, fam: Family):
    self.fam = fam

  def section(self, hf_cfg):
    return section(self.fam, hf_cfg)

  def params(self, get, sec, hf_cfg=None):
    return params(self.fam, get, sec, hf_cfg)

  @staticmethod
  def random_inputs(sec, rng: np.random.Generator, batch: int, hf_cfg=None):
    s = min(32, sec.max_len)
    return {"tokens": rng.integers(0, sec.vocab_size, (batch, s)).astype(np.int32)}

  run_ours = staticmethod(hc.decoder_logits)

  def run_hf(self, model_dir, inputs):
    import torch
    import transformers
    cls = getattr(transformers, self.fam.architecture)
    model = cls.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
      out = model(input_ids=torch.from_numpy(inputs["tokens"].astype(np.int64)))
    return out.logits.float().numpy(), np.ones(inputs["tokens"].shape, bool)


for _fam in (LLAMA, QWEN2, GEMMA):
  hc.CONVERTERS.register(_fam.name)(Converter(_fam))


class Refused:
  """An HF model type we name, to refuse it with its reasons (fields and values)."""
  component = "decoder"
  anchor = "embed_tokens.weight"

  def __init__(self, model_type: str, fields: Tuple[str, ...], why: str):
    self.model_type, self.fields, self.why = model_type, fields, why

  def section(self, hf_cfg):
    values = ", ".join(f"{f}={getattr(hf_cfg, f, None)!r}" for f in self.fields)
    raise ValueError(f"HF model_type={self.model_type!r} is not supported ({values}): {self.why}")


hc.CONVERTERS.register("gemma2")(Refused(
    "gemma2", ("attn_logit_softcapping", "final_logit_softcapping", "sliding_window",
               "query_pre_attn_scalar"),
    "our attention has no logit soft-capping, no sliding-window layers and scales by "
    "1/sqrt(head_dim); Gemma (model_type 'gemma') imports"))


# ------------------------------------------------------------------ export

def hf_config(fam: Family, sec) -> dict:
  """HF config.json fields for our decoder section as family `fam`; raises
  naming the model.decoder field the family cannot express."""
  def need(cond, field, why):
    if not cond:
      raise ValueError(f"model.decoder.{field}={sec.get(field)!r}: {why} ({fam.name})")
  need(sec.norm == "pre", "norm", "pre-norm only")
  need(sec.positions == "rotary", "positions", "rotary positions only")
  need(sec.get("mlp", "dense") == "gated", "mlp", "a gated MLP only")
  need(sec.get("norm_type", "layer") == fam.norm_type, "norm_type", f"needs {fam.norm_type!r}")
  need(sec.activation in hc.OUR_TO_HF_ACTIVATION, "activation",
       f"no HF name; known: {sorted(hc.OUR_TO_HF_ACTIVATION)}")
  use_bias, qkv_bias = bool(sec.get("use_bias", True)), bool(sec.get("qkv_bias", False))
  if fam.biases == "qkv":
    need(not use_bias, "use_bias", "biases only on q/k/v")
    need(qkv_bias, "qkv_bias", "q/k/v always have biases")
  elif fam.biases == "attention_bias":
    need(not use_bias, "use_bias", "no biases")
    need(not qkv_bias, "qkv_bias", "no biases")
  else:
    need(not qkv_bias or use_bias, "qkv_bias", "biases on every projection or none")
  scale = sec.get("embed_scale", 1.0)
  if fam.embed_scaled:
    need(math.isclose(scale, sec.emb_dim ** 0.5, rel_tol=1e-12), "embed_scale",
         f"must be sqrt(emb_dim) = {sec.emb_dim ** 0.5}")
    # HF's GemmaConfig reads hidden_act 'gelu' as the tanh approximation.
    need(sec.activation != "gelu", "activation", "HF Gemma reads 'gelu' as gelu_tanh")
  else:
    need(scale == 1.0, "embed_scale", "embeddings are not scaled")
  e, h, k, d = _shape(sec)
  scaling = sec.get("rope_scaling") or {}
  scaling = scaling.to_dict() if hasattr(scaling, "to_dict") else dict(scaling)
  rotary.check(scaling)
  theta = float(sec.get("rope_theta", rotary.DEFAULT_THETA))
  rope = {"rope_type": "default", **scaling, "rope_theta": theta}
  cfg = {
      "architectures": [fam.architecture], "model_type": fam.name,
      "vocab_size": sec.vocab_size, "hidden_size": e, "intermediate_size": sec.mlp_dim,
      "num_hidden_layers": sec.num_layers, "num_attention_heads": h, "num_key_value_heads": k,
      "head_dim": d, "hidden_act": hc.OUR_TO_HF_ACTIVATION[sec.activation],
      "max_position_embeddings": sec.max_len, "rms_norm_eps": sec.ln_eps,
      "tie_word_embeddings": bool(sec.tie_embeddings), "rope_parameters": rope,
      # transformers 4.x reads these two instead of rope_parameters.
      "rope_theta": theta, "rope_scaling": dict(scaling) or None,
      "attention_dropout": 0.0, "initializer_range": 0.02, "use_cache": True,
      "bos_token_id": None, "eos_token_id": None, "pad_token_id": None,
  }
  if fam.biases == "attention_mlp_bias":
    cfg.update(attention_bias=use_bias, mlp_bias=use_bias)
  elif fam.biases == "attention_bias":
    cfg.update(attention_bias=False)
  cfg.update(dict(fam.export_fields))
  if fam is QWEN2:
    cfg["max_window_layers"] = sec.num_layers
  return cfg


def state_dict(sec, tree) -> Dict[str, np.ndarray]:
  """Our decoder params (unboxed numpy; either layout) -> HF state dict."""
  tree = layout.unstack(tree)
  e, h, k, d = _shape(sec)
  sd = {"model.embed_tokens.weight": tree["embedder"]["embedding"],
        "model.norm.weight": tree["final_norm"]["scale"]}

  def put(name, node, weight):
    sd[f"{name}.weight"] = weight
    if "bias" in node:
      sd[f"{name}.bias"] = np.asarray(node["bias"]).reshape(-1)

  for i in range(sec.num_layers):
    layer, p = tree[f"layers_{i}"], f"model.layers.{i}"
    a = layer["attn"]
    for ours, hf, n in (("query", "q_proj", h), ("key", "k_proj", k), ("value", "v_proj", k)):
      put(f"{p}.self_attn.{hf}", a[ours], np.asarray(a[ours]["kernel"]).reshape(e, n * d).T)
    put(f"{p}.self_attn.o_proj", a["out"], np.asarray(a["out"]["kernel"]).reshape(h * d, e).T)
    for ours, hf in (("wi_gate", "gate_proj"), ("wi_up", "up_proj"), ("wo", "down_proj")):
      put(f"{p}.mlp.{hf}", layer["mlp"][ours], np.asarray(layer["mlp"][ours]["kernel"]).T)
    sd[f"{p}.input_layernorm.weight"] = layer["ln_attn"]["scale"]
    sd[f"{p}.post_attention_layernorm.weight"] = layer["ln_mlp"]["scale"]
  if not sec.tie_embeddings:
    sd["lm_head.weight"] = np.asarray(tree["lm_head"]["kernel"]).T
  return {k_: np.ascontiguousarray(np.asarray(v, np.float32)) for k_, v in sd.items()}


class ExportFormat:
  """Our decoder -> HF dir of family `fam` (an hc.HF_DECODER_FORMATS entry)."""

  def __init__(self, fam: Family):
    self.fam = fam

  def hf_config(self, sec) -> dict:
    return hf_config(self.fam, sec)

  @staticmethod
  def state_dict(sec, tree):
    return state_dict(sec, tree)


for _fam in (LLAMA, QWEN2, GEMMA):
  hc.HF_DECODER_FORMATS.register(_fam.name)(ExportFormat(_fam))
