"""Connectors: encoder width -> decoder width."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from metalm_jax.models import layers
from metalm_jax.registry import Registry

CONNECTORS = Registry("connector")


def _dense(features, dtype, name):
  return nn.Dense(features, dtype=dtype, param_dtype=jnp.float32,
                  kernel_init=layers.param_init(nn.initializers.xavier_uniform(),
                                                ("embed_in", "embed")),
                  bias_init=layers.param_init(nn.initializers.zeros, ("embed",)), name=name)


@CONNECTORS.register("linear")
class LinearConnector(nn.Module):
  cfg: Any
  out_dim: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    return _dense(self.out_dim, self.dtype, "proj")(x)


@CONNECTORS.register("mlp")
class MlpConnector(nn.Module):
  """cfg.num_layers Dense layers (paper VL: 3) with cfg.activation between;
  hidden width cfg.hidden_dim (0 = decoder width)."""
  cfg: Any
  out_dim: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    n = self.cfg.num_layers
    if n < 1:
      raise ValueError(f"connector.num_layers={n}; expected >= 1")
    hidden = self.cfg.get("hidden_dim", 0) or self.out_dim
    act = layers.ACTIVATIONS.get(self.cfg.get("activation", "gelu"))
    for i in range(n - 1):
      x = act(_dense(hidden, self.dtype, f"dense_{i}")(x))
    return _dense(self.out_dim, self.dtype, f"dense_{n - 1}")(x)
