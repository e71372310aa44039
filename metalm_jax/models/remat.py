"""Named rematerialisation policies (config `remat_policy`, per stack).

  none                              no remat: every activation is kept
  full                              keep only the block's inputs, recompute the rest
  dots_saveable                     keep every matmul output
  dots_with_no_batch_dims_saveable  keep matmul outputs without batch dims (weights x acts)
  save_qkv_proj                     keep the q/k/v projections ('query_proj', ...)
  save_attn_out                     keep the attention result ('attn_out')
  save_mlp_hidden                   keep the MLP hidden layer ('mlp_hidden')
  save_qkv_attn_out                 save_qkv_proj + save_attn_out
  save_attn_mlp                     save_qkv_attn_out + save_mlp_hidden

The names are tagged with jax.ad_checkpoint.checkpoint_name in
metalm_jax/models/layers.py. A policy is a jax.checkpoint policy; 'none'
maps to None (the block is not wrapped at all).
"""
from __future__ import annotations

import jax

from metalm_jax.registry import Registry

POLICIES = Registry("remat policy")
QKV = ("query_proj", "key_proj", "value_proj")
_NO_REMAT = object()

POLICIES.register("none")(_NO_REMAT)
POLICIES.register("full")(jax.checkpoint_policies.nothing_saveable)
POLICIES.register("dots_saveable")(jax.checkpoint_policies.dots_saveable)
POLICIES.register("dots_with_no_batch_dims_saveable")(
    jax.checkpoint_policies.dots_with_no_batch_dims_saveable)
POLICIES.register("save_qkv_proj")(jax.checkpoint_policies.save_only_these_names(*QKV))
POLICIES.register("save_attn_out")(jax.checkpoint_policies.save_only_these_names("attn_out"))
POLICIES.register("save_mlp_hidden")(jax.checkpoint_policies.save_only_these_names("mlp_hidden"))
POLICIES.register("save_qkv_attn_out")(
    jax.checkpoint_policies.save_only_these_names(*QKV, "attn_out"))
POLICIES.register("save_attn_mlp")(
    jax.checkpoint_policies.save_only_these_names(*QKV, "attn_out", "mlp_hidden"))


def policy_name(cfg, field: str = "model.decoder") -> str:
  """The stack's policy name: `remat_policy`, or the older boolean `remat`
  (True = 'full'); both set and disagreeing is an error naming the fields."""
  name = cfg.get("remat_policy", None)
  legacy = cfg.get("remat", None)
  if name is None:
    return "full" if legacy else "none"
  if name not in POLICIES:
    raise ValueError(f"{field}.remat_policy={name!r}; known: {list(POLICIES)}")
  if legacy is not None and bool(legacy) != (name != "none"):
    raise ValueError(f"{field}.remat={legacy!r} contradicts {field}.remat_policy={name!r}; "
                     "set remat_policy only")
  return name


def policy(name: str):
  """(wrap, jax policy): wrap is False for 'none'."""
  p = POLICIES.get(name)
  return (False, None) if p is _NO_REMAT else (True, p)
