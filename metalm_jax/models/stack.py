"""A stack of identical Transformer blocks, unrolled or scanned.

Unrolled (default): modules `layers_0` ... `layers_{n-1}`, params such as
`layers_3/attn/query/kernel` [emb, heads, kv].
Scanned (`scan_layers=True`): one nn.scan'd module `layers` whose params carry
a leading axis of size n with the logical name `layers` (mapped to no mesh
axis), e.g. `layers/attn/query/kernel` [n, emb, heads, kv]. Compile time and
HLO size no longer grow with depth. Its KV cache is stacked on axis 1, so the
batch stays axis 0 of every cache array (beam search reorders rows there).
metalm_jax/models/layout.py converts params between the two layouts.

Each stack's config section picks `remat_policy` (metalm_jax/models/remat.py)
and `attention_impl` (layers.resolve_attention_impl).
"""
from __future__ import annotations

from typing import Any, List, Optional

import flax.linen as nn

from metalm_jax.models import layers, layout
from metalm_jax.models import lora as lora_lib
from metalm_jax.models import remat as remat_lib
from metalm_jax.models import rotary as rotary_lib

LAYER_AXIS = layout.STACKED  # logical name of the stacked axis; module name of a scanned stack
# Block.__call__(self, x, mask, positions, key_valid, decode, deterministic):
# decode and deterministic are Python bools (static under remat and scan).
_STATIC = (5, 6)


def _as_dict(section) -> dict:
  if not section:
    return {}
  return section.to_dict() if hasattr(section, "to_dict") else dict(section)


def _block_fields(cfg, dtype, *, causal: bool, rotary: bool, deepnorm_layers: int):
  """Block fields from a stack's config section. The family fields (norm_type,
  mlp, num_kv_heads, qkv_bias, rope_theta, rope_scaling) default to the
  GPT-2 / BERT / ViT shape when a section lacks them (encoders, old configs)."""
  head_dim = cfg.get("head_dim", 0) or cfg.emb_dim // cfg.num_heads
  n = deepnorm_layers or cfg.num_layers
  theta = float(cfg.get("rope_theta", rotary_lib.DEFAULT_THETA))
  scale = (rotary_lib.frequency_scale(head_dim, theta, _as_dict(cfg.get("rope_scaling")))
           if rotary else None)
  return dict(
      num_heads=cfg.num_heads, head_dim=head_dim, mlp_dim=cfg.mlp_dim,
      activation=cfg.activation, norm=cfg.norm, ln_eps=cfg.ln_eps,
      dropout=cfg.get("dropout", 0.0), use_bias=cfg.get("use_bias", True), rotary=rotary,
      causal=causal, attention_impl=cfg.get("attention_impl", "auto"), dtype=dtype,
      deepnorm_alpha=(2.0 * n) ** 0.25, deepnorm_beta=(8.0 * n) ** -0.25,
      norm_type=cfg.get("norm_type", "layer"), mlp=cfg.get("mlp", "dense"),
      num_kv_heads=cfg.get("num_kv_heads", 0), qkv_bias=cfg.get("qkv_bias", False),
      rope_theta=theta, rope_scale=scale)


def build(cfg, dtype, *, causal: bool = False, rotary: bool = False,
          deepnorm_layers: int = 0, field: str = "model",
          lora: Optional[lora_lib.Lora] = None) -> List[nn.Module]:
  """The blocks of a stack from its config section (num_layers, scan_layers,
  remat_policy, attention_impl, ...); apply them with `apply`. `lora`: the
  adapters of every block (the decoder's `lora` section, models/lora.py);
  scanned, they are stacked on the `layers` axis like the other params."""
  scan = bool(cfg.get("scan_layers", False))
  wrap, policy = remat_lib.policy(remat_lib.policy_name(cfg, field))
  cls = layers.Block
  if wrap:
    # prevent_cse only matters outside scan (scan already blocks CSE).
    cls = nn.remat(cls, policy=policy, prevent_cse=not scan, static_argnums=_STATIC)
  fields = _block_fields(cfg, dtype, causal=causal, rotary=rotary,
                         deepnorm_layers=deepnorm_layers)
  fields["lora"] = lora
  if not scan:
    return [cls(**fields, name=f"layers_{i}") for i in range(cfg.num_layers)]
  scanned = nn.scan(
      cls, variable_axes={"params": 0, "cache": 1},
      split_rngs={"params": True, "dropout": True},
      in_axes=(nn.broadcast,) * 5, length=cfg.num_layers,
      metadata_params={nn.PARTITION_NAME: LAYER_AXIS})
  return [scanned(**fields, scan_carry=True, name=LAYER_AXIS)]


def apply(blocks, x, mask=None, positions=None, key_valid=None, decode: bool = False,
          deterministic: bool = True) -> Any:
  """Runs x through the blocks of `build` (either layout)."""
  for block in blocks:
    out = block(x, mask, positions, key_valid, decode, deterministic)
    x = out[0] if isinstance(out, tuple) else out
  return x
