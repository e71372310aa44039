"""Pieces shared by the HF converters: activation names, layer mapping from
torch Linear layout ([out, in]) to our Flax layout, and the converter registry."""
from __future__ import annotations

from typing import Any, Callable, Dict

import jax
import ml_collections
import numpy as np

from metalm_jax.models.decoder import Decoder
from metalm_jax.registry import Registry

# HF `hidden_act` / `activation_function` -> our layers.ACTIVATIONS name.
HF_ACTIVATIONS = {
    "gelu": "gelu", "gelu_new": "gelu_new", "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_fast": "gelu_tanh", "quick_gelu": "quick_gelu", "relu": "relu",
    "silu": "silu", "swish": "silu",
}
# Our name -> HF name, for export back to HF.
OUR_TO_HF_ACTIVATION = {"gelu": "gelu", "gelu_new": "gelu_new", "gelu_tanh": "gelu_pytorch_tanh",
                        "quick_gelu": "quick_gelu", "relu": "relu", "silu": "silu"}

# HF model_type -> converter (see hf_clip.py, hf_bert.py, hf_gpt2.py, hf_whisper.py).
CONVERTERS = Registry("HF model_type")
# Our decoder family -> its HF export format: an object with
# hf_config(section) -> config.json dict (raises ValueError naming the
# model.decoder field the format cannot express) and state_dict(section,
# tree) -> {HF name: array} (see convert/hf_export.py).
HF_DECODER_FORMATS = Registry("HF decoder family")
# Component -> where its params go (`config.init_components` key; a '/' path
# names a subtree below the top level). A converter may serve other components
# through `variants` ({component: converter}, e.g. CLIP -> "video").
COMPONENT_KEYS = {"vision": "encoders_vision", "text": "encoders_text", "audio": "encoders_audio",
                  "decoder": "decoder",
                  "video": "encoders_video/video/vit"}


def activation(hf_name: str, field: str) -> str:
  if hf_name not in HF_ACTIVATIONS:
    raise ValueError(f"HF config {field}={hf_name!r} has no equivalent here; "
                     f"supported: {sorted(HF_ACTIVATIONS)}")
  return HF_ACTIVATIONS[hf_name]


def require(cond: bool, field: str, value: Any, why: str) -> None:
  if not cond:
    raise ValueError(f"HF config {field}={value!r}: {why}")


def apply_options(conv, section, options, model_type: str) -> None:
  """Sets the section fields the user picked at import (`options`, e.g.
  {"readout": "map"}); a converter lists what it takes in `conv.options`
  ({field: allowed values}). Anything else is refused naming the option."""
  allowed = getattr(conv, "options", {})
  for name, value in (options or {}).items():
    if name not in allowed:
      raise ValueError(f"option {name}={value!r}: HF model_type={model_type!r} takes "
                       f"{sorted(allowed) or 'no options'}")
    if value not in allowed[name]:
      raise ValueError(f"option {name}={value!r}: expected one of {list(allowed[name])}")
    section[name] = value


def layer_norm(get: Callable[[str], np.ndarray], prefix: str, weight="weight", bias="bias"):
  return {"scale": get(f"{prefix}.{weight}"), "bias": get(f"{prefix}.{bias}")}


def dense(w_in_out: np.ndarray, b: np.ndarray) -> Dict[str, np.ndarray]:
  return {"kernel": w_in_out, "bias": b}


def attention(q_w, q_b, k_w, k_b, v_w, v_b, o_w, o_b, num_heads: int):
  """Our attention params from [in, out]-layout q/k/v/out matrices."""
  emb = q_w.shape[0]
  hd = q_w.shape[1] // num_heads

  def qkv(w, b):
    return {"kernel": w.reshape(emb, num_heads, hd), "bias": b.reshape(num_heads, hd)}

  return {"query": qkv(q_w, q_b), "key": qkv(k_w, k_b), "value": qkv(v_w, v_b),
          "out": {"kernel": o_w.reshape(num_heads, hd, o_w.shape[1]), "bias": o_b}}


def linear(get, name: str):
  """torch nn.Linear weight [out, in] -> ([in, out], bias)."""
  return get(f"{name}.weight").T, get(f"{name}.bias")


def decoder_logits(section, tree, inputs) -> np.ndarray:
  """Our Decoder's float32 logits [B, S, vocab] on inputs["tokens"] [B, S]
  (positions 0..S-1, no padding): the `run_ours` of the decoder converters."""
  tokens = inputs["tokens"]
  b, s = tokens.shape
  positions = np.broadcast_to(np.arange(s, dtype=np.int32), (b, s))
  model = Decoder(ml_collections.FrozenConfigDict(section))
  out = jax.jit(model.apply)({"params": tree}, tokens, positions, np.ones((b, s), np.int32))
  return np.asarray(out)
