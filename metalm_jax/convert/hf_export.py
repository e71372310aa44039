"""Our decoder -> an HF model dir of its own family (GPT-2, Llama, Qwen2, Gemma).

Each family's format is an `hf_common.HF_DECODER_FORMATS` entry
(convert/hf_gpt2.py, convert/hf_llama_like.py). A decoder section fits at
most one of them (GPT-2: LayerNorm + learned positions; Llama: RMSNorm and
no q/k/v-only biases; Qwen2: q/k/v-only biases; Gemma: the (1 + w) RMSNorm),
so `family_of` picks it from the section's fields; `save_hf_decoder` writes
config.json + model.safetensors that the family's `*ForCausalLM.from_pretrained`
loads with our logits. The mappings are transposes and reshapes: ours -> HF ->
ours (`import-hf`) is bit-exact.

A decoder with LoRA adapters (models/lora.py) is written merged (`lora`
"merge": W + alpha / rank * A . B) or as its base ("separate"; the adapters
then go apart: convert/lora_export.py save_adapters).
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple


from metalm_jax.convert import hf_common as hc
from metalm_jax.convert import hf_io, lora_export
# Importing the format modules registers them.
from metalm_jax.convert import hf_gpt2, hf_llama_like  # noqa: F401


def _reasons(section) -> Dict[str, str]:
  out = {}
  for name in hc.HF_DECODER_FORMATS:
    try:
      hc.HF_DECODER_FORMATS.get(name).hf_config(section)
    except ValueError as e:
      out[name] = str(e)
    else:
      out[name] = ""
  return out


def family_of(section) -> str:
  """The HF family whose format expresses the decoder section; raises with
  every family's reason when none does."""
  reasons = _reasons(section)
  fits = [name for name, why in reasons.items() if not why]
  if len(fits) != 1:
    detail = "; ".join(f"{n}: {w or 'fits'}" for n, w in sorted(reasons.items()))
    raise ValueError(f"the decoder maps to {len(fits)} HF families, expected 1 ({detail})")
  return fits[0]


def hf_decoder(section, tree, family: Optional[str] = None,
               lora: str = "merge") -> Tuple[str, dict, dict]:
  """(family, config.json dict, state dict) of the decoder params `tree`
  (boxed or not; unrolled or scanned; LoRA adapters merged or left out as
  `lora` says)."""
  family = family or family_of(section)
  fmt = hc.HF_DECODER_FORMATS.get(family)
  cfg = fmt.hf_config(section)
  return family, cfg, fmt.state_dict(section, lora_export.decoder_tree(section, tree, lora))


def save_hf_decoder(out_dir: str, section, tree, family: Optional[str] = None,
                    lora: str = "merge") -> Tuple[str, str]:
  """Writes the HF dir; returns (family, out_dir)."""
  family, cfg, sd = hf_decoder(section, tree, family, lora)
  return family, hf_io.write_hf_dir(out_dir, cfg, sd)
