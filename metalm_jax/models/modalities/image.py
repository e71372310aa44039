"""Images: a CLIP- or SigLIP-shaped ViT (encoder type "vit"), every token docked
(readout "tokens") or its attention-pooled vector (readout "map")."""
from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from metalm_jax import presets
from metalm_jax.media import images as images_lib
from metalm_jax.models.modalities import base
from metalm_jax.models.vision import VisionEncoder, flops_tokens, tokens_per_image


class VitItems(nn.Module):
  """Images [B, N, H, W, 3] -> [B, N, tokens, width]; invalid items are
  encoded as zeros (never docked)."""
  cfg: Any
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, inputs, deterministic=True):
    pixels = base.valid_only(inputs["pixels"], inputs)  # [B, N, H, W, 3]
    b, n = pixels.shape[:2]
    out = VisionEncoder(self.cfg, self.dtype, name="vit")(
        pixels.reshape((b * n,) + pixels.shape[2:]), deterministic)
    return out.reshape((b, n) + out.shape[1:])


def inputs(cfg, b):
  """pixels float32 [B, N, S, S, 3] (normalised), valid bool [B, N]."""
  n, s = cfg.max_items, cfg.image_size
  return {"pixels": ((b, n, s, s, 3), np.float32), "valid": ((b, n), np.bool_)}


def load(value, enc_cfg, norm, stats) -> Optional[np.ndarray]:
  """Encoded bytes / PIL / array -> float32 [S, S, 3] (media/images.py:
  to_rgb, then preprocess_image with `norm` = (mean, std))."""
  rgb, counts = images_lib.to_rgb(value)
  base.merge_counts(stats, counts)
  if rgb is None:
    return None
  if rgb.shape[0] != rgb.shape[1]:
    base.count(stats, "resized_nonsquare_image")
  return images_lib.preprocess_image(rgb, enc_cfg.image_size, *norm)


IMAGE = base.register(base.Modality(
    name="image", encoder_type="vit", encoder=VitItems, preset=presets.vit, inputs=inputs,
    slot_length=tokens_per_image, key="pixels", brackets=("image_start", "image_end"),
    load=load, flops_tokens=flops_tokens))
