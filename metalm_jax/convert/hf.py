"""HF model dir -> our component params, and the logit checker.

`import_hf` writes a params dir (metalm_jax.params_io) holding the subtree
that goes at `params[<params_key>]` ('encoders_vision' = {'vit': ...},
'encoders_text' = {'bert': ...}, 'encoders_audio' = {'whisper': ...}, 'decoder'; a '/'
path for a deeper subtree:
'encoders_video/video/vit', the per-frame ViT of a video encoder), with
config.json:

    {"component": ..., "params_key": ..., "hf_model_type": ..., "section": {...},
     "skipped_weights": [...]}

`section` is the model config section to copy into `model.encoders.<name>`
or `model.decoder`; the trainer loads the params with
`config.init_components = {params_key: OUT}` (an encoder named other than
'vision' / 'text' / 'video' in the model config takes key 'encoders_<name>',
or 'encoders_<name>/video/vit'). Vision: HF model types clip / clip_vision_model
(hf_clip.py), siglip / siglip_vision_model (hf_siglip.py; option readout=map
imports its pooling head). Decoders: HF model types gpt2 (hf_gpt2.py),
llama, qwen2, gemma (hf_llama_like.py). `check_hf` runs HF (torch) and ours on the same random
inputs and reports max |ours - ref| and the relative difference
max |ours - ref| / max |ref|, over real (non-padding) positions.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any, Dict, List, Optional

import numpy as np

from metalm_jax import params_io
from metalm_jax import storage
from metalm_jax.convert import hf_common as hc
from metalm_jax.convert import hf_io
from metalm_jax.models import layout
# Importing the converter modules registers them.
from metalm_jax.convert import (hf_bert, hf_clip, hf_gpt2, hf_llama_like, hf_siglip,  # noqa: F401
                                hf_whisper)

DEFAULT_RTOL = 1e-4  # float32 parity: max|ours-ref| / max|ref|


@dataclasses.dataclass
class Imported:
  component: str
  hf_model_type: str
  section: Any            # ConfigDict: our config section
  tree: Dict[str, Any]    # numpy params subtree for params[COMPONENT_KEYS[component]]
  skipped: List[str]      # HF weights that have no place in our module
  hf_config: Any = None


def _hf_config(config: dict):
  """The transformers config object of a config.json dict (what
  AutoConfig.from_pretrained builds, without its hub path handling, so a
  gs:// model dir works)."""
  from transformers import CONFIG_MAPPING
  return CONFIG_MAPPING[config["model_type"]].from_dict(config)


def converter_for(model_type: str, component: str):
  if component not in hc.COMPONENT_KEYS:
    raise ValueError(f"component={component!r}; expected one of {sorted(hc.COMPONENT_KEYS)}")
  conv = hc.CONVERTERS.get(model_type)
  conv = getattr(conv, "variants", {}).get(component, conv)
  if conv.component != component:
    raise ValueError(f"component={component!r} does not match HF model_type={model_type!r} "
                     f"(it converts to component {conv.component!r})")
  return conv


def load_hf(model_dir: str, component: str, scan_layers: bool = False,
            options: Optional[Dict[str, Any]] = None) -> Imported:
  """Reads config and weights of `model_dir` and maps them to ours; with
  `scan_layers` the layers are stacked (metalm_jax/models/layout.py) and the
  section says scan_layers=True. `options`: section fields the converter lets
  the user pick (its `options`, e.g. SigLIP's {"readout": "map"})."""
  config = hf_io.read_config(model_dir)
  model_type = config.get("model_type")
  conv = converter_for(model_type, component)
  hf_cfg = _hf_config(config)
  section = conv.section(hf_cfg)
  hc.apply_options(conv, section, options, model_type)
  side = getattr(conv, "side_settings", None)  # e.g. Whisper's feature extractor
  if side is not None:
    section.update(side(model_dir, hf_cfg))
  weights = hf_io.read_weights(model_dir)
  reader = hf_io.WeightReader(weights, hf_io.find_prefix(weights, conv.anchor))
  tree = conv.params(reader, section, hf_cfg)
  if scan_layers:
    section.scan_layers = True
    tree = layout.stack(tree)
  skipped = reader.unused()
  if skipped:
    logging.info("import %s: skipped %d HF weights without a counterpart: %s",
                 model_dir, len(skipped), skipped[:8])
  return Imported(component, model_type, section, tree, skipped, hf_cfg)


TOKENIZER_FILES = ("tokenizer.json", "special_tokens_map.json", "tokenizer_config.json")


def import_hf(model_dir: str, component: str, out: str, scan_layers: bool = False,
              add_special_tokens: bool = True,
              options: Optional[Dict[str, Any]] = None) -> Imported:
  """Converts and writes a params dir for `config.init_components` (either
  layout loads into either model layout). A tokenizer.json in `model_dir`
  (with its HF side files) is copied along, so an imported decoder keeps its
  own vocabulary (`HfTokenizer(out/tokenizer.json)`). For a decoder, with
  `add_special_tokens` the project's special tokens the tokenizer lacks are
  added to the copy, and their embedding rows (the mean of the original
  rows) to the params; `section.vocab_size` grows to match and config.json's
  `added_tokens` lists {token: id} (convert/hf_vocab.py)."""
  from metalm_jax.convert import hf_vocab
  from metalm_jax.data.hf_tokenizer import HfTokenizer
  imp = load_hf(model_dir, component, scan_layers, options)
  meta = {"component": component, "params_key": hc.COMPONENT_KEYS[component],
          "hf_model_type": imp.hf_model_type, "skipped_weights": imp.skipped}
  copied = [f for f in TOKENIZER_FILES if storage.exists(storage.join(model_dir, f))]
  for f in copied:
    storage.copy(storage.join(model_dir, f), storage.join(out, f))
  if "tokenizer.json" in copied:
    tok_path = storage.join(out, "tokenizer.json")
    vocab = HfTokenizer(tok_path).vocab_size
    if vocab > imp.section.get("vocab_size", vocab):
      raise ValueError(f"{model_dir}/tokenizer.json has vocab_size={vocab} > the model's "
                       f"vocab_size={imp.section.vocab_size}")
    if add_special_tokens and component == "decoder":
      meta["added_tokens"] = hf_vocab.add_special_tokens(tok_path, imp.tree, imp.section)
    meta["tokenizer"] = "tokenizer.json"
  meta["section"] = imp.section.to_dict()
  params_io.save_params(out, imp.tree, meta)
  return imp


def compare(ours: np.ndarray, ref: np.ndarray, valid: np.ndarray) -> Dict[str, float]:
  """max |ours - ref| and max |ours - ref| / max |ref| over valid positions."""
  if ours.shape != ref.shape:
    raise ValueError(f"ours has shape {ours.shape}, HF reference {ref.shape}")
  o, r = np.asarray(ours, np.float64)[valid], np.asarray(ref, np.float64)[valid]
  max_abs = float(np.max(np.abs(o - r)))
  return {"max_abs": max_abs, "max_ref": float(np.max(np.abs(r))),
          "rel": max_abs / max(float(np.max(np.abs(r))), 1e-30)}


def check_hf(model_dir: str, component: str, *, seed: int = 0, batch: int = 2,
             rtol: float = DEFAULT_RTOL, scan_layers: bool = False,
             options: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
  """Runs HF and ours (unrolled, or scanned with stacked params) on the same
  random inputs; returns the differences and `ok` (rel <= rtol)."""
  imp = load_hf(model_dir, component, scan_layers, options)
  conv = converter_for(imp.hf_model_type, component)
  inputs = conv.random_inputs(imp.section, np.random.default_rng(seed), batch, imp.hf_config)
  ref, valid = conv.run_hf(model_dir, inputs)
  ours = conv.run_ours(imp.section, imp.tree, inputs)
  report = compare(ours, ref, valid)
  report.update(component=component, hf_model_type=imp.hf_model_type, rtol=rtol,
                shape=list(ref.shape), ok=report["rel"] <= rtol)
  return report
