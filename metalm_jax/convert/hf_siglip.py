"""SigLIP vision tower -> our VisionEncoder (`params['encoders_<name>']['vit']`).

HF model types `siglip_vision_model` (SiglipVisionModel) and `siglip`
(SiglipModel: its `vision_model.*` weights; the text tower, logit scale and
bias are skipped and listed). SigLIP's tower: patch conv with bias, learned
positions, no class token, no pre-LayerNorm, pre-LN layers (CLIP's layer
names), `hidden_act` gelu_pytorch_tanh, post_layernorm (eps 1e-6 in the
released models), and the attention-pooling head (`vision_use_head`: a
learned probe, torch MultiheadAttention, LayerNorm, MLP).

Option `readout` (section field, models/vision.py READOUTS):
  "tokens" (default)  every patch token after post_layernorm is docked;
                      parity vs HF's `last_hidden_state` (already normed);
  "map"               the pooling head's vector (1 per image) is docked;
                      parity vs HF's `pooler_output`. Its weights go to
                      `vit/map_head`; with "tokens" they are skipped.

An HF `image_size` that `patch_size` does not divide (so400m/14 at 384 px)
maps to the largest multiple, the pixels HF's VALID patch conv sees (378 px:
27 x 27 patches): our encoder on the top-left 378 x 378 of a 384 px image
equals HF on the whole of it, whatever the unseen margin holds (`check_hf`
feeds HF the image with a random margin). Our pipeline resizes images to 378
px instead of 384-and-ignore-6.

Refused, naming the HF field: non-square `image_size` / `patch_size`, a
`patch_size` above `image_size`, `num_channels` != 3, `hidden_size` not
divisible by `num_attention_heads`, `hidden_act` without an equivalent,
nonzero `attention_dropout` (our attention drops no probabilities), and
readout="map" with `vision_use_head` false.
"""
from __future__ import annotations

import logging

import numpy as np

from metalm_jax import presets
from metalm_jax.convert import hf_common as hc
from metalm_jax.convert.hf_clip import encoder_layers
from metalm_jax.models import vision

# readout -> the HF output it must equal ([B, T, D]), from SiglipVisionModel's output.
HF_OUTPUTS = {"tokens": lambda out: out.last_hidden_state,
              "map": lambda out: out.pooler_output[:, None]}


def _vision_cfg(hf_cfg):
  return getattr(hf_cfg, "vision_config", None) or hf_cfg


def _square(value, field: str) -> int:
  """An HF size that may be an int or an (h, w) pair; only squares map."""
  if isinstance(value, (list, tuple)):
    hc.require(len(value) == 2 and value[0] == value[1], field, value,
               "only square sizes are supported")
    value = value[0]
  return int(value)


def map_head(get, heads: int):
  """`vit/map_head` from HF's `head.*` (torch MultiheadAttention packs q, k, v
  in `in_proj_weight` [3D, D] / `in_proj_bias` [3D])."""
  w, b = get("head.attention.in_proj_weight"), get("head.attention.in_proj_bias")
  (q_w, k_w, v_w), (q_b, k_b, v_b) = np.split(w, 3), np.split(b, 3)
  d = w.shape[1]
  return {
      "probe": get("head.probe", (1, 1, d)).reshape(1, d),
      "attn": hc.attention(q_w.T, q_b, k_w.T, k_b, v_w.T, v_b,
                           *hc.linear(get, "head.attention.out_proj"), heads),
      "ln": hc.layer_norm(get, "head.layernorm"),
      "mlp": {"wi": hc.dense(*hc.linear(get, "head.mlp.fc1")),
              "wo": hc.dense(*hc.linear(get, "head.mlp.fc2"))},
  }


@hc.CONVERTERS.register("siglip_vision_model")
@hc.CONVERTERS.register("siglip")
class SiglipVision:
  component = "vision"
  anchor = "embeddings.patch_embedding.weight"  # the text tower has no patch conv
  options = {"readout": ("tokens", "map")}

  @staticmethod
  def section(hf_cfg):
    v = _vision_cfg(hf_cfg)
    image, patch = _square(v.image_size, "image_size"), _square(v.patch_size, "patch_size")
    hc.require(1 <= patch <= image, "patch_size", v.patch_size,
               f"expected 1 <= patch_size <= image_size={v.image_size}")
    if image % patch:
      logging.info("SigLIP image_size=%d, patch_size=%d: HF sees the top-left %d px; "
                   "section image_size=%d", image, patch, image - image % patch,
                   image - image % patch)
    hc.require(v.hidden_size % v.num_attention_heads == 0, "num_attention_heads",
               v.num_attention_heads, f"does not divide hidden_size={v.hidden_size}")
    hc.require(v.num_channels == 3, "num_channels", v.num_channels, "only RGB (3) is supported")
    hc.require(not v.attention_dropout, "attention_dropout", v.attention_dropout,
               "attention probabilities are not dropped here (models/layers.py)")
    return presets.siglip(
        image_size=image - image % patch, patch_size=patch, num_layers=v.num_hidden_layers,
        emb_dim=v.hidden_size, num_heads=v.num_attention_heads, mlp_dim=v.intermediate_size,
        activation=hc.activation(v.hidden_act, "hidden_act"), ln_eps=v.layer_norm_eps,
        norm="pre", use_bias=True, head_dim=0, dropout=0.0, readout="tokens")

  @staticmethod
  def params(get, section, hf_cfg):
    v = _vision_cfg(hf_cfg)
    if section.readout == "map":
      use_head = getattr(v, "vision_use_head", True)
      hc.require(use_head, "vision_use_head", use_head,
                 "readout='map' needs SigLIP's attention-pooling head")
    vit = {
        # torch conv [out, in, kh, kw] -> flax [kh, kw, in, out]
        "patch_embed": {"kernel": get("embeddings.patch_embedding.weight").transpose(2, 3, 1, 0),
                        "bias": get("embeddings.patch_embedding.bias")},
        "pos_embedding": get("embeddings.position_embedding.weight"),
        "final_norm": hc.layer_norm(get, "post_layernorm"),
    }
    vit.update(encoder_layers(get, section.num_layers, section.num_heads))
    if section.readout == "map":
      vit["map_head"] = map_head(get, section.num_heads)
    return {"vit": vit}

  @staticmethod
  def random_inputs(section, rng: np.random.Generator, batch: int, hf_cfg=None):
    """Pixels for ours; for HF the same pixels with a random margin up to HF's
    image_size (which its patch conv does not see); and the readout whose HF
    output `run_hf` returns."""
    s = section.image_size
    full = s if hf_cfg is None else _square(_vision_cfg(hf_cfg).image_size, "image_size")
    hf_pixels = rng.standard_normal((batch, full, full, 3)).astype(np.float32)
    return {"pixels": np.ascontiguousarray(hf_pixels[:, :s, :s]), "hf_pixels": hf_pixels,
            "readout": section.readout}

  @staticmethod
  def run_ours(section, tree, inputs):
    import jax
    import ml_collections
    model = vision.VisionEncoder(ml_collections.FrozenConfigDict(section))
    return np.asarray(jax.jit(model.apply)({"params": tree["vit"]}, inputs["pixels"]))

  @staticmethod
  def run_hf(model_dir, inputs):
    import torch
    from transformers import SiglipVisionModel
    model = SiglipVisionModel.from_pretrained(model_dir, dtype=torch.float32).eval()
    pixels = torch.from_numpy(inputs.get("hf_pixels", inputs["pixels"])).permute(0, 3, 1, 2)
    with torch.no_grad():
      ref = HF_OUTPUTS[inputs["readout"]](model(pixel_values=pixels))
    return ref.numpy(), np.ones(ref.shape[:2], bool)
