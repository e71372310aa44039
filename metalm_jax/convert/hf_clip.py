"""CLIP vision tower -> our VisionEncoder (`params['encoders_<name>']['vit']`).

CLIP: patch conv without bias, class embedding, learned positions, pre_layrnorm,
pre-LN layers with quick_gelu, post_layernorm. Our `final_norm` applies
post_layernorm to every token, so parity is against
`post_layernorm(last_hidden_state)`.

Component "video" (`ClipVideo`): the same weights fill the per-frame ViT of a
"video" encoder (`params['encoders_<name>']['video']['vit']`); its temporal
params are not in CLIP and keep their init. Parity: with no temporal layers
and the "tokens" pool (mean over frames), our encoder on a static clip equals
CLIP on that image.
"""
from __future__ import annotations

import numpy as np

from metalm_jax import presets
from metalm_jax.convert import hf_common as hc


def _vision_cfg(hf_cfg):
  return getattr(hf_cfg, "vision_config", None) or hf_cfg


def encoder_layers(get, num_layers: int, heads: int):
  """`layers_<i>` of our stack from HF's `encoder.layers.<i>` (CLIP's layer
  names and pre-LN layout; SigLIP's vision layers are the same)."""
  out = {}
  for i in range(num_layers):
    p = f"encoder.layers.{i}"
    a = f"{p}.self_attn"
    out[f"layers_{i}"] = {
        "attn": hc.attention(*hc.linear(get, f"{a}.q_proj"), *hc.linear(get, f"{a}.k_proj"),
                             *hc.linear(get, f"{a}.v_proj"), *hc.linear(get, f"{a}.out_proj"),
                             heads),
        "ln_attn": hc.layer_norm(get, f"{p}.layer_norm1"),
        "ln_mlp": hc.layer_norm(get, f"{p}.layer_norm2"),
        "mlp": {"wi": hc.dense(*hc.linear(get, f"{p}.mlp.fc1")),
                "wo": hc.dense(*hc.linear(get, f"{p}.mlp.fc2"))},
    }
  return out


@hc.CONVERTERS.register("clip_vision_model")
@hc.CONVERTERS.register("clip")
class ClipVision:
  component = "vision"
  anchor = "embeddings.class_embedding"

  @staticmethod
  def section(hf_cfg):
    v = _vision_cfg(hf_cfg)
    hc.require(v.hidden_size % v.num_attention_heads == 0, "num_attention_heads",
               v.num_attention_heads, f"does not divide hidden_size={v.hidden_size}")
    hc.require(v.num_channels == 3, "num_channels", v.num_channels, "only RGB (3) is supported")
    return presets.vit(
        image_size=v.image_size, patch_size=v.patch_size, num_layers=v.num_hidden_layers,
        emb_dim=v.hidden_size, num_heads=v.num_attention_heads, mlp_dim=v.intermediate_size,
        activation=hc.activation(v.hidden_act, "hidden_act"), ln_eps=v.layer_norm_eps,
        class_token=True, pre_norm=True, final_norm=True, patch_bias=False, norm="pre",
        use_bias=True, head_dim=0, dropout=0.0)

  @staticmethod
  def params(get, section, hf_cfg):
    heads = section.num_heads
    vit = {
        "class_embedding": get("embeddings.class_embedding"),
        # torch conv [out, in, kh, kw] -> flax [kh, kw, in, out]
        "patch_embed": {"kernel": get("embeddings.patch_embedding.weight").transpose(2, 3, 1, 0)},
        "pos_embedding": get("embeddings.position_embedding.weight"),
        "pre_norm": hc.layer_norm(get, "pre_layrnorm"),
        "final_norm": hc.layer_norm(get, "post_layernorm"),
    }
    vit.update(encoder_layers(get, section.num_layers, heads))
    return {"vit": vit}

  @staticmethod
  def random_inputs(section, rng: np.random.Generator, batch: int, hf_cfg=None):
    s = section.image_size
    return {"pixels": rng.standard_normal((batch, s, s, 3)).astype(np.float32)}

  @staticmethod
  def run_ours(section, tree, inputs):
    import jax
    import ml_collections
    from metalm_jax.models.vision import VisionEncoder
    model = VisionEncoder(ml_collections.FrozenConfigDict(section))
    out = jax.jit(model.apply)({"params": tree["vit"]}, inputs["pixels"])
    return np.asarray(out)

  @staticmethod
  def run_hf(model_dir, inputs):
    import torch
    from transformers import CLIPVisionModel
    model = CLIPVisionModel.from_pretrained(model_dir, dtype=torch.float32).eval()
    pixels = torch.from_numpy(inputs["pixels"]).permute(0, 3, 1, 2)
    with torch.no_grad():
      out = model(pixel_values=pixels)
      tower = getattr(model, "vision_model", model)
      ref = tower.post_layernorm(out.last_hidden_state)
    return ref.numpy(), np.ones(ref.shape[:2], bool)


class ClipVideo(ClipVision):
  component = "video"

  @staticmethod
  def section(hf_cfg):
    vit = ClipVision.section(hf_cfg)
    keep = {k: vit[k] for k in vit if k not in ("type", "max_items", "connector")}
    return presets.video(**keep)

  @staticmethod
  def params(get, section, hf_cfg):
    return ClipVision.params(get, section, hf_cfg)["vit"]

  @staticmethod
  def random_inputs(section, rng: np.random.Generator, batch: int, hf_cfg=None):
    """An image and the static clip of it (every frame the same)."""
    pixels = ClipVision.random_inputs(section, rng, batch)["pixels"]
    return {"pixels": pixels, "frames": np.repeat(pixels[:, None], section.frames, axis=1)}

  @staticmethod
  def parity_section(section):
    """No temporal layers, every ViT token meaned over frames: on a static clip
    these are CLIP's features of the image."""
    from metalm_jax.models.vision import tokens_per_image
    out = section.copy_and_resolve_references()
    out.update(temporal_layers=0, pool="tokens", num_vectors=tokens_per_image(section))
    return out

  @staticmethod
  def run_ours(section, tree, inputs):
    import jax
    import flax.linen as nn
    import ml_collections
    from metalm_jax.models.video import VideoEncoder
    model = VideoEncoder(ml_collections.FrozenConfigDict(ClipVideo.parity_section(section)))
    shapes = nn.meta.unbox(jax.eval_shape(model.init, jax.random.key(0), inputs["frames"]))
    pos = shapes["params"]["temporal_pos_embedding"]
    if set(shapes["params"]) != {"vit", "temporal_pos_embedding"}:
      raise ValueError(f"parity video encoder has params {sorted(shapes['params'])}; expected "
                       "only the ViT and the temporal positions (temporal_layers=0)")
    # The temporal positions at their init (zeros); compiling model.init would
    # cost seconds for the ViT's initialisers that the import replaces.
    params = {"vit": tree, "temporal_pos_embedding": np.zeros(pos.shape, pos.dtype)}
    return np.asarray(jax.jit(model.apply)({"params": params}, inputs["frames"]))


ClipVision.variants = {"video": ClipVideo}
