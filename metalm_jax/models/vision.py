"""Vision Transformer of CLIP / SigLIP shape (patch conv, optional class
token, pre-LN layers) and its readouts."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp

from metalm_jax.models import layers, stack
from metalm_jax.registry import Registry

FIELD = "model.encoders.<vision>"


@dataclasses.dataclass(frozen=True)
class Readout:
  """What the encoder emits from its final tokens [B, T, D].

  count: T -> vectors emitted per image (the modality's slot length);
  apply: (cfg, dtype, tokens) -> [B, count(T), D], called inside
  VisionEncoder's compact __call__ (so modules it builds are its children)."""
  count: Callable[[int], int]
  apply: Callable[[Any, Any, Any], Any]


# cfg.readout -> Readout. "tokens": every token (patches, +1 class token) is
# docked; "map": SigLIP's multi-head attention pooling head, one vector.
READOUTS = Registry("vit readout")


def readout_of(cfg) -> Readout:
  name = cfg.get("readout", "tokens")
  if name not in READOUTS:
    raise ValueError(f"{FIELD}.readout={name!r}: known {list(READOUTS)}")
  return READOUTS.get(name)


def vit_tokens(cfg) -> int:
  """Tokens the Transformer layers run on per image: patches (+1 class token)."""
  if cfg.image_size % cfg.patch_size:
    raise ValueError(f"image_size={cfg.image_size} is not a multiple of "
                     f"patch_size={cfg.patch_size}")
  return (cfg.image_size // cfg.patch_size) ** 2 + int(cfg.class_token)


def tokens_per_image(cfg) -> int:
  """Vectors the encoder emits per image (the slot length): every token with
  the "tokens" readout, 1 with "map"."""
  return readout_of(cfg).count(vit_tokens(cfg))


def flops_tokens(cfg):
  """{subtree: (vectors per image, attention context)} for the FLOPs count
  (train/metrics.py; its default for the whole encoder is the slot length):
  the ViT runs on all T tokens whatever the readout; the "map" head's probe
  is one query (its query projection, attention and MLP count once) over T
  keys and values."""
  t = vit_tokens(cfg)
  out = {"vit": (t, t)}
  if cfg.get("readout", "tokens") == "map":
    out.update({"vit/map_head": (1, t), "vit/map_head/attn/key": (t, t),
                "vit/map_head/attn/value": (t, t)})
  return out


class ProbeAttention(nn.Module):
  """Multi-head attention of learned probe queries over the tokens: queries
  from `probe` [P, D], keys and values from x [B, T, D] -> [B, P, D] (as
  torch.nn.MultiheadAttention(probe, x, x), scale head_dim^-0.5). Params as
  layers.Attention's: query / key / value [D, H, hd], out [H, hd, D]."""
  num_heads: int
  head_dim: int
  use_bias: bool = True
  impl: Any = "auto"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, probe, x):
    b, d = x.shape[0], x.shape[-1]
    proj = lambda name: layers.DenseND((self.num_heads, self.head_dim), ("embed", "heads", "kv"),
                                       use_bias=self.use_bias, dtype=self.dtype, name=name)
    act = ("act_batch", "act_length", "act_heads", "act_kv")
    q = proj("query")(probe)  # [P, H, hd]
    q = layers.constrain(jnp.broadcast_to(q, (b,) + q.shape), act)
    k = layers.constrain(proj("key")(x), act)
    v = layers.constrain(proj("value")(x), act)
    impl = layers.resolve_attention_impl(self.impl, q.dtype, self.head_dim, q_len=q.shape[1],
                                         kv_len=k.shape[1])
    out = layers.ATTENTION_IMPLEMENTATIONS.get(impl).attend(q, k, v, None, False, act)
    out = layers.constrain(out, act)
    return layers.DenseND((d,), ("heads", "kv", "embed"), n_in=2, use_bias=self.use_bias,
                          dtype=self.dtype, name="out")(out)


class MapHead(nn.Module):
  """Multi-head attention pooling (SigLIP's `SiglipMultiheadAttentionPoolingHead`,
  big_vision's MAPHead): one learned probe attends over the tokens, then
  y = a + mlp(LayerNorm(a)). x [B, T, D] -> [B, 1, D]."""
  cfg: Any
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    cfg = self.cfg
    d = x.shape[-1]
    probe = self.param("probe", layers.param_init(nn.initializers.normal(0.02), (None, "embed")),
                       (1, d))
    a = ProbeAttention(cfg.num_heads, cfg.get("head_dim", 0) or d // cfg.num_heads,
                       use_bias=cfg.get("use_bias", True),
                       impl=cfg.get("attention_impl", "auto"), dtype=self.dtype,
                       name="attn")(probe.astype(self.dtype), x)
    h = layers.LayerNorm(cfg.ln_eps, self.dtype, name="ln")(a)
    return a + layers.Mlp(cfg.mlp_dim, cfg.activation, dtype=self.dtype,
                          use_bias=cfg.get("use_bias", True), name="mlp")(h)


def _map_head(cfg, dtype, x):
  return MapHead(cfg, dtype, name="map_head")(x)


READOUTS.register("tokens")(Readout(count=lambda t: t, apply=lambda cfg, dtype, x: x))
READOUTS.register("map")(Readout(count=lambda t: 1, apply=_map_head))


class VisionEncoder(nn.Module):
  """Returns [B, tokens_per_image, emb_dim]: every token's state (patches, +1
  class token) with readout "tokens", the pooled vector with "map".

  cfg: image_size, patch_size, emb_dim, num_layers, num_heads, mlp_dim,
  activation, ln_eps, class_token, pre_norm, final_norm, patch_bias, readout
  (READOUTS; absent = "tokens"). `final_norm` applies CLIP's / SigLIP's
  post_layernorm to all tokens (CLIP applies it to the pooled class token
  only; docking uses every token); the "map" head reads the normed tokens.
  """
  cfg: Any
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, pixels, deterministic=True):
    cfg = self.cfg
    p = cfg.patch_size
    if pixels.shape[1] != cfg.image_size or pixels.shape[2] != cfg.image_size:
      raise ValueError(f"pixels are {pixels.shape[1:3]}, config image_size={cfg.image_size}")
    readout = readout_of(cfg)
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
    x = stack.apply(stack.build(cfg, self.dtype, field=FIELD), x,
                    deterministic=deterministic)
    if cfg.final_norm:
      x = layers.LayerNorm(cfg.ln_eps, self.dtype, name="final_norm")(x)
    return readout.apply(cfg, self.dtype, x)
