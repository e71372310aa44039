"""Video encoder: the CLIP-shaped ViT on every frame, then time.

The per-frame ViT is the "vit" encoder's `VisionEncoder` (same module, same
param subtree `vit`), so CLIP vision weights import unchanged. After it:
learned temporal position embeddings (zero at init, so a fresh video encoder
on a static clip starts as the image encoder), an optional bidirectional
Transformer across frames, and pooling to `num_vectors` vectors per clip.

cfg (presets.video): the ViT fields of presets.vit, plus
  frames            F, frames per clip (the batch's `frames` [..., F, H, W, 3])
  temporal_layers   Transformer layers across frames (0 = none); width emb_dim,
                    heads `temporal_heads` (0 = num_heads), MLP `temporal_mlp_dim`
                    (0 = mlp_dim); pre-LN with a final norm; the stack options
                    (scan_layers, remat_policy, attention_impl) are the ViT's
  pool              what the temporal layers see and what comes out (POOLS):
                    "frames": one vector per frame (its class token; the mean of
                      its patch tokens without one), attention across the F frame
                      vectors -> F vectors in time order;
                    "tokens": every ViT token; attention across frames at each
                      token position, then the mean over frames -> T vectors
                      (T = tokens per frame)
  num_vectors       K vectors docked per clip: the pool's M vectors averaged over
                    K contiguous windows (window i = [floor(iM/K), ceil((i+1)M/K));
                    K = M keeps them as they are; K > M is an error)
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp
import ml_collections
import numpy as np

from metalm_jax.models import layers, stack
from metalm_jax.models.vision import VisionEncoder, tokens_per_image
from metalm_jax.registry import Registry

POOLS = Registry("video pool")
FIELD = "model.encoders.<video>"


def temporal_section(cfg) -> ml_collections.FrozenConfigDict:
  """The stack config of the temporal layers (stack.build reads it)."""
  return ml_collections.FrozenConfigDict(dict(
      num_layers=cfg.temporal_layers, num_heads=cfg.get("temporal_heads", 0) or cfg.num_heads,
      emb_dim=cfg.emb_dim, head_dim=0, mlp_dim=cfg.get("temporal_mlp_dim", 0) or cfg.mlp_dim,
      activation=cfg.activation, norm="pre", ln_eps=cfg.ln_eps, dropout=cfg.get("dropout", 0.0),
      use_bias=cfg.get("use_bias", True), scan_layers=cfg.get("scan_layers", False),
      remat_policy=cfg.get("remat_policy", None), attention_impl=cfg.get("attention_impl", "auto")))


def window_matrix(m: int, k: int, field: str = FIELD) -> np.ndarray:
  """[k, m] averaging matrix of adaptive average pooling m -> k vectors."""
  if not 1 <= k <= m:
    raise ValueError(f"{field}.num_vectors={k}: the pool yields {m} vectors per clip; "
                     f"expected 1 <= num_vectors <= {m}")
  w = np.zeros((k, m), np.float32)
  for i in range(k):
    lo, hi = (i * m) // k, math.ceil((i + 1) * m / k)
    w[i, lo:hi] = 1.0 / (hi - lo)
  return w


class Temporal(nn.Module):
  """Bidirectional pre-LN Transformer over the frame axis of x [S, F, D]."""
  cfg: Any
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, deterministic=True):
    section = temporal_section(self.cfg)
    x = stack.apply(stack.build(section, self.dtype, field=FIELD + ".temporal"), x,
                    deterministic=deterministic)
    return layers.LayerNorm(section.ln_eps, self.dtype, name="final_norm")(x)


@dataclasses.dataclass(frozen=True)
class Pool:
  """select: ViT tokens [C, F, T, D] -> the tokens the temporal layers see
  [C, F, S, D]; combine: after them, [C, S, F, D] -> M vectors [C, M, D];
  count: M from the config."""
  select: Callable[[Any, Any], Any]
  combine: Callable[[Any], Any]
  count: Callable[[Any], int]


def _frame_vector(x, cfg):
  """The class token of each frame, else its mean patch token."""
  return x[:, :, :1] if cfg.class_token else x.mean(axis=2, keepdims=True)


def _vit_tokens(cfg) -> int:
  return tokens_per_image(cfg)  # ViT tokens per frame


POOLS.register("frames")(Pool(_frame_vector, lambda x: x[:, 0], lambda cfg: cfg.frames))
POOLS.register("tokens")(Pool(lambda x, cfg: x, lambda x: x.mean(axis=2), _vit_tokens))


def flops_tokens(cfg):
  """{subtree: (vectors per clip, attention context)} for the FLOPs count
  (train/metrics.py): the ViT runs on every frame, the temporal layers on
  each selected token's frames."""
  t = _vit_tokens(cfg)
  s = 1 if cfg.pool == "frames" else t
  return {"video/vit": (cfg.frames * t, t), "video/temporal": (s * cfg.frames, cfg.frames)}


def check_config(cfg, field: str = FIELD) -> None:
  """Video fields a ConfigDict cannot check itself; errors name the field."""
  if cfg.frames < 1:
    raise ValueError(f"{field}.frames={cfg.frames}: must be >= 1")
  if cfg.pool not in POOLS:
    raise ValueError(f"{field}.pool={cfg.pool!r}: known {list(POOLS)}")
  if cfg.temporal_layers < 0:
    raise ValueError(f"{field}.temporal_layers={cfg.temporal_layers}: must be >= 0")
  heads = temporal_section(cfg).num_heads
  if cfg.emb_dim % heads:
    raise ValueError(f"{field}.temporal_heads={heads}: does not divide emb_dim={cfg.emb_dim}")
  window_matrix(POOLS.get(cfg.pool).count(cfg), cfg.num_vectors, field)


class VideoEncoder(nn.Module):
  """frames [..., F, H, W, 3] -> [..., num_vectors, emb_dim]."""
  cfg: Any
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, frames, deterministic=True):
    cfg = self.cfg
    f = cfg.frames
    if frames.ndim < 5 or frames.shape[-4] != f:
      raise ValueError(f"video frames have shape {frames.shape}; expected [..., F={f}, H, W, 3] "
                       f"({FIELD}.frames={f})")
    lead = frames.shape[:-4]
    c = math.prod(lead)
    x = VisionEncoder(cfg, self.dtype, name="vit")(
        frames.reshape((c * f,) + frames.shape[-3:]), deterministic)
    x = x.reshape(c, f, x.shape[1], cfg.emb_dim)
    pool = POOLS.get(cfg.pool)
    x = pool.select(x, cfg)  # [C, F, S, D]
    s = x.shape[2]
    pos = self.param("temporal_pos_embedding", layers.param_init(
        nn.initializers.zeros, ("length", "embed")), (f, cfg.emb_dim))
    x = x + pos[None, :, None].astype(self.dtype)
    x = x.transpose(0, 2, 1, 3)  # [C, S, F, D]: each token position is a sequence over time
    if cfg.temporal_layers:
      x = Temporal(cfg, self.dtype, name="temporal")(
          x.reshape(c * s, f, cfg.emb_dim), deterministic).reshape(c, s, f, cfg.emb_dim)
    x = pool.combine(x)  # [C, M, D]
    w = jnp.asarray(window_matrix(x.shape[1], cfg.num_vectors), self.dtype)
    x = jnp.einsum("km,cmd->ckd", w, x.astype(self.dtype))
    x = layers.constrain(x, ("act_batch", "act_length", "act_embed"))
    return x.reshape(lead + x.shape[1:])
