"""Vision Transformer of CLIP shape (patch conv, class token, pre-LN)."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from metalm_jax.models import layers, stack


def tokens_per_image(cfg) -> int:
  """Vectors the encoder emits per image: patches (+1 class token)."""
  if cfg.image_size % cfg.patch_size:
    raise ValueError(f"image_size={cfg.image_size} is not a multiple of "
                     f"patch_size={cfg.patch_size}")
  return (cfg.image_size // cfg.patch_size) ** 2 + int(cfg.class_token)


class VisionEncoder(nn.Module):
  """Returns every token's state [B, T, emb_dim], T = patches (+1 class token).

  cfg: image_size, patch_size, emb_dim, num_layers, num_heads, mlp_dim,
  activation, ln_eps, class_token, pre_norm, final_norm, patch_bias.
  `final_norm` applies CLIP's post_layernorm to all tokens (CLIP applies it
  to the pooled class token only; docking uses every token).
  """
  cfg: Any
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, pixels, deterministic=True):
    cfg = self.cfg
    p = cfg.patch_size
    if pixels.shape[1] != cfg.image_size or pixels.shape[2] != cfg.image_size:
      raise ValueError(f"pixels are {pixels.shape[1:3]}, config image_size={cfg.image_size}")
    x = nn.Conv(cfg.emb_dim, (p, p), strides=(p, p), padding="VALID",
                use_bias=cfg.patch_bias, dtype=self.dtype, param_dtype=jnp.float32,
                kernel_init=layers.param_init(nn.initializers.lecun_normal(),
                                              (None, None, None, "embed")),
                bias_init=layers.param_init(nn.initializers.zeros, ("embed",)),
                name="patch_embed")(pixels.astype(self.dtype))
    b = x.shape[0]
    x = x.reshape(b, -1, cfg.emb_dim)
    init = nn.initializers.normal(0.02)
    if cfg.class_token:
      cls = self.param("class_embedding", layers.param_init(init, ("embed",)), (cfg.emb_dim,))
      x = jnp.concatenate([jnp.broadcast_to(cls.astype(self.dtype), (b, 1, cfg.emb_dim)), x], 1)
    pos = self.param("pos_embedding", layers.param_init(init, ("length", "embed")),
                     (x.shape[1], cfg.emb_dim))
    x = x + pos.astype(self.dtype)
    if cfg.pre_norm:
      x = layers.LayerNorm(cfg.ln_eps, self.dtype, name="pre_norm")(x)
    x = stack.apply(stack.build(cfg, self.dtype, field="model.encoders.<vision>"), x,
                    deterministic=deterministic)
    if cfg.final_norm:
      x = layers.LayerNorm(cfg.ln_eps, self.dtype, name="final_norm")(x)
    return x
