"""Train state and optimizer: AdamW with warm-up and decay, clipping, no weight
decay on norms and biases, parameter groups by regex (frozen or with their own
learning-rate multiplier).

A group is {regex, frozen, lr_mult} plus optionally `exclude` (regexes: a
name matching one is not in the group) and `fallback` (the group takes only
params that no other group matches). Frozen groups get optax.set_to_zero:
no Adam moments exist for their params (multi_transform masks them out of
the trained groups' state). `resolve_groups` adds the groups other fields
imply: optimizer.encoder_top_layers and model.decoder.lora (adapters train,
the base is frozen; models/lora.py).

Group regexes are written against unrolled names ('.../layers_3/...'). A
param of a scanned stack ('.../layers/...', leading layer axis) is matched
slice by slice through those names: when some of its layers are frozen and
the others fall in one trainable group, the leaf takes that group and its
frozen slices are zeroed, in the gradient (so neither the clipping norm nor
Adam's moments see them) and again in the final update (so weight decay
cannot move them).

The state is a plain dict {"step", "params", "opt_state",
"skipped_nonfinite_steps"} of arrays (no
LogicallyPartitioned boxes), so Orbax saves and restores it directly; the
boxed version is only built abstractly to read the sharding specs.
"""
from __future__ import annotations

import re
from typing import Any, Callable, Dict, List, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from metalm_jax.models import layout
from metalm_jax.models import lora as lora_lib

DEFAULT_GROUP = "default"
SKIPPED_KEY = "skipped_nonfinite_steps"  # steps whose update was skipped (train/steps.py)


def _is_box(x) -> bool:
  return isinstance(x, nn.meta.AxisMetadata)


def map_with_names(fn: Callable[[str, Any], Any], tree):
  """fn(name, param) over a params tree. A LogicallyPartitioned box counts as
  one leaf (fn sees its value), so labels and masks of boxed params are a
  prefix of them: optax.masked / multi_transform then keep the boxes on
  Adam's moments, which is where the state's sharding specs come from."""
  return jax.tree_util.tree_map_with_path(
      lambda p, x: fn(layout.path_str(p), x.unbox() if _is_box(x) else x), tree, is_leaf=_is_box)


def _groups(opt_cfg) -> Dict[str, Any]:
  groups = dict(opt_cfg.get("groups", {}) or {})
  if DEFAULT_GROUP in groups:
    raise ValueError(f"optimizer.groups.{DEFAULT_GROUP}: the name is reserved for "
                     "parameters that match no group")
  for name, g in groups.items():
    for field, rx in [("regex", g["regex"])] + [("exclude", x) for x in g.get("exclude") or ()]:
      try:
        re.compile(rx)
      except re.error as e:
        raise ValueError(f"optimizer.groups.{name}.{field}={rx!r}: {e}") from None
  return groups


def _plain(node) -> Dict[str, Any]:
  return node.to_dict() if hasattr(node, "to_dict") else dict(node)


# Group name of the frozen lower part of encoder <name> (optimizer.encoder_top_layers).
BELOW_TOP_GROUP = "frozen_below_top_{}"


def below_top_regex(encoder: str, num_layers: int, top: int) -> str:
  """Params of encoder `encoder` that stay frozen when only its top `top`
  of `num_layers` layers train: its embeddings and lower layers; the top
  layers and a final norm after them (ViT `final_norm`) train. top = 0
  freezes the whole encoder (its connector still trains)."""
  if not 0 <= top < num_layers:
    raise ValueError(f"below_top_regex: top={top} must be in [0, num_layers={num_layers})")
  if top == 0:
    return rf"^encoders_{encoder}/"
  keep = "|".join(str(i) for i in range(num_layers - top, num_layers))
  return rf"^encoders_{encoder}/(?!(.*/)?(layers_({keep})|final_norm)/)"


def _top_layer_groups(opt_cfg, model_cfg, groups) -> Dict[str, Any]:
  """Frozen groups (BELOW_TOP_GROUP) from `encoder_top_layers`."""
  tops = dict(opt_cfg.get("encoder_top_layers", {}) or {})
  for name, k in sorted(tops.items()):
    field = f"optimizer.encoder_top_layers.{name}"
    if name not in model_cfg.encoders:
      raise ValueError(f"{field}: no such encoder in config.model.encoders "
                       f"({sorted(model_cfg.encoders)})")
    num = int(model_cfg.encoders[name].num_layers)
    if isinstance(k, bool) or not isinstance(k, int) or not -1 <= k <= num:
      raise ValueError(f"{field}={k!r} must be an integer in [-1, {num}] (-1 or {num}: "
                       "every layer trains)")
    if k in (-1, num):
      continue
    group = BELOW_TOP_GROUP.format(name)
    if group in groups:
      raise ValueError(f"optimizer.groups.{group}: the name is reserved for {field}")
    groups[group] = dict(regex=below_top_regex(name, num, k), frozen=True, lr_mult=1.0)
  return groups


# The groups model.decoder.lora implies (`resolve_groups`).
LORA_GROUP = "lora_adapters"       # the adapters: trained
LORA_BASE_GROUP = "lora_frozen_base"  # lora.freeze's scope minus adapters: frozen (fallback)


def _lora_groups(model_cfg, groups) -> Dict[str, Any]:
  """With model.decoder.lora on: the adapters form LORA_GROUP (trained; every
  other group excludes them), and the non-adapter params of the scope
  `lora.freeze` names form LORA_BASE_GROUP, frozen, as a fallback: a param an
  explicit group matches follows that group."""
  section = model_cfg.decoder.get("lora") if "decoder" in model_cfg else None
  if not lora_lib.enabled(section):
    return groups
  for name in (LORA_GROUP, LORA_BASE_GROUP):
    if name in groups:
      raise ValueError(f"optimizer.groups.{name}: the name is reserved for model.decoder.lora")
  scope = section.get("freeze", "decoder")
  if scope not in lora_lib.FREEZE_SCOPES:
    raise ValueError(f"model.decoder.lora.freeze={scope!r}: known: "
                     f"{sorted(lora_lib.FREEZE_SCOPES)}")
  adapters = lora_lib.ADAPTER_REGEX
  out = {n: {**_plain(g), "exclude": list(g.get("exclude") or ()) + [adapters]}
         for n, g in groups.items()}
  out[LORA_GROUP] = dict(regex=adapters, frozen=False, lr_mult=1.0)
  out[LORA_BASE_GROUP] = dict(regex=lora_lib.FREEZE_SCOPES[scope], exclude=[adapters],
                              frozen=True, lr_mult=1.0, fallback=True)
  return out


def resolve_groups(opt_cfg, model_cfg):
  """`opt_cfg` with the groups other config fields imply added to `groups`:
  - `encoder_top_layers` ({encoder name: k}: only the top k layers of that
    encoder train, -1 = all): frozen groups BELOW_TOP_GROUP; an unknown
    encoder or k out of [-1, num_layers] is an error naming it;
  - `model.decoder.lora` when enabled (`_lora_groups`): adapters train, the
    base of `lora.freeze`'s scope is frozen unless an explicit group says
    otherwise.
  `opt_cfg` itself when neither applies."""
  groups = {n: _plain(g) for n, g in (opt_cfg.get("groups", {}) or {}).items()}
  resolved = _lora_groups(model_cfg, _top_layer_groups(opt_cfg, model_cfg, dict(groups)))
  if resolved == groups:
    return opt_cfg
  out = opt_cfg.to_dict() if hasattr(opt_cfg, "to_dict") else dict(opt_cfg)
  out.update(groups=resolved, encoder_top_layers={})
  return type(opt_cfg)(out) if hasattr(opt_cfg, "to_dict") else out


def describe_groups(params, opt_cfg) -> List[str]:
  """One line per optimizer group: its rule and the params it holds (the
  trainer logs the resolution)."""
  groups = _groups(opt_cfg)
  sizes: Dict[str, list] = {}
  def add(n, x):
    sizes.setdefault(_label(n, x, groups), []).append(int(np.prod(np.shape(x))))
  map_with_names(add, params)
  lines = []
  for name in sorted(groups) + [DEFAULT_GROUP]:
    g = groups.get(name, {})
    rule = (f"regex {g['regex']!r}" + (f" except {list(g['exclude'])}" if g.get("exclude") else "")
            + (" (only params no other group matches)" if g.get("fallback") else "")
            if name in groups else "params no group matches")
    how = "frozen" if g.get("frozen", False) else f"trained, lr x {float(g.get('lr_mult', 1.0))}"
    n = sizes.get(name, [])
    lines.append(f"{name}: {rule}: {how}: {sum(n):,} params in {len(n)} arrays")
  return lines


def _matches(c, name: str) -> bool:
  return bool(re.search(c["regex"], name)) and not any(
      re.search(x, name) for x in c.get("exclude") or ())


def group_of(name: str, groups: Mapping[str, Any]) -> str:
  """The group whose regex matches the param name (re.search) and none of
  whose `exclude` regexes do; one at most, fallback groups only when no
  other group matches."""
  hits = [g for g, c in sorted(groups.items()) if not c.get("fallback") and _matches(c, name)]
  if not hits:
    hits = [g for g, c in sorted(groups.items()) if c.get("fallback") and _matches(c, name)]
  if len(hits) > 1:
    raise ValueError(f"param {name!r} matches several optimizer.groups: {hits}; "
                     "make the regexes disjoint (e.g. with a (?!...) lookahead)")
  return hits[0] if hits else DEFAULT_GROUP


def _frozen(g: str, groups) -> bool:
  return g != DEFAULT_GROUP and bool(groups[g].get("frozen", False))


def _slice_groups(name: str, x, groups):
  """The group of each layer slice of a stacked param; [group] otherwise."""
  if layout.is_stacked_name(name) and len(np.shape(x)) >= 1:
    return [group_of(s, groups) for s in layout.slice_names(name, np.shape(x)[0])]
  return [group_of(name, groups)]


def _label(name: str, x, groups) -> str:
  gs = _slice_groups(name, x, groups)
  trained = sorted({g for g in gs if not _frozen(g, groups)})
  if len(trained) > 1:
    raise ValueError(f"param {name!r} stacks layers of several trainable optimizer.groups "
                     f"{trained}; a stacked param may mix frozen layers with one trainable "
                     "group only (or set scan_layers=False for that stack)")
  return trained[0] if trained else gs[0]


def param_labels(params, opt_cfg):
  groups = _groups(opt_cfg)
  return map_with_names(lambda n, x: _label(n, x, groups), params)


def trainable_mask(params, opt_cfg):
  """Per param: True (trained), False (frozen), or for a stacked param whose
  layers differ, a numpy bool [num_layers] (True = that layer is trained)."""
  groups = _groups(opt_cfg)
  def ok(n, x):
    per_layer = np.array([not _frozen(g, groups) for g in _slice_groups(n, x, groups)])
    return bool(per_layer[0]) if per_layer.all() or not per_layer.any() else per_layer
  return map_with_names(ok, params)


def trained_fraction(t) -> float:
  """Share of a param's elements that train, from its `trainable_mask` entry."""
  return float(np.mean(t))


def mask_frozen(x, t):
  """x with frozen parts zeroed; t is the param's `trainable_mask` entry."""
  if isinstance(t, (bool, np.bool_)):
    return x if t else jnp.zeros_like(x)
  keep = jnp.asarray(t).reshape((-1,) + (1,) * (x.ndim - 1))
  return jnp.where(keep, x, jnp.zeros_like(x))


def zero_frozen(opt_cfg) -> optax.GradientTransformation:
  """Zeroes the updates of frozen params and of frozen layer slices."""
  def update(updates, state, params=None):
    del params
    mask = trainable_mask(updates, opt_cfg)
    return jax.tree.map(mask_frozen, updates, mask), state
  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def decay_mask(params, opt_cfg):
  """Weight decay applies to params of rank >= 2 whose name does not match
  `optimizer.no_decay_regex` (norm scales and biases by default)."""
  rx = re.compile(opt_cfg.no_decay_regex)
  return map_with_names(lambda n, x: x.ndim >= 2 and not rx.search(n), params)


# decay name -> (lr, end_lr_frac, decay_steps) -> optax schedule of the steps after warm-up.
SCHEDULES = {
    "cosine": lambda lr, end, steps: optax.cosine_decay_schedule(lr, steps, alpha=end),
    "linear": lambda lr, end, steps: optax.linear_schedule(lr, lr * end, steps),
    "constant": lambda lr, end, steps: optax.constant_schedule(lr),
}


def lr_schedule(opt_cfg, total_steps: int) -> optax.Schedule:
  """Linear warm-up to `lr`, then `decay` down to `lr * end_lr_frac` at total_steps.

  Warm-up step s (0-based) takes lr * (s + 1) / warmup_steps, so the first
  step already trains; the decay runs over steps warmup_steps .. total_steps.
  """
  if opt_cfg.decay not in SCHEDULES:
    raise ValueError(f"optimizer.decay={opt_cfg.decay!r}; known: {sorted(SCHEDULES)}")
  lr, warm, end = opt_cfg.lr, opt_cfg.warmup_steps, opt_cfg.end_lr_frac
  decay = SCHEDULES[opt_cfg.decay](lr, end, max(total_steps - warm, 1))
  if not warm:
    return decay
  warmup = optax.linear_schedule(lr / warm, lr, max(warm - 1, 1))
  return optax.join_schedules([warmup, decay], [warm])


def make_optimizer(opt_cfg, total_steps: int) -> optax.GradientTransformation:
  """Zero frozen grads -> clip by global norm -> per-group AdamW -> zero
  frozen updates."""
  groups = _groups(opt_cfg)
  schedule = lr_schedule(opt_cfg, total_steps)
  transforms = {}
  for name in list(groups) + [DEFAULT_GROUP]:
    g = groups.get(name, {})
    if g.get("frozen", False):
      transforms[name] = optax.set_to_zero()
      continue
    mult = float(g.get("lr_mult", 1.0))
    transforms[name] = optax.chain(
        optax.scale_by_adam(b1=opt_cfg.b1, b2=opt_cfg.b2, eps=opt_cfg.eps),
        optax.add_decayed_weights(opt_cfg.weight_decay, mask=lambda p: decay_mask(p, opt_cfg)),
        optax.scale_by_learning_rate(lambda s, m=mult: schedule(s) * m))
  chain = [zero_frozen(opt_cfg)]
  if opt_cfg.clip_norm:
    chain.append(optax.clip_by_global_norm(opt_cfg.clip_norm))
  chain.append(optax.multi_transform(transforms, lambda p: param_labels(p, opt_cfg)))
  chain.append(zero_frozen(opt_cfg))  # weight decay of frozen slices of stacked params
  return optax.chain(*chain)


def init_state(params, tx) -> Dict[str, Any]:
  """Works on boxed params too: the optimizer state then mirrors the boxes."""
  return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params),
          SKIPPED_KEY: jnp.zeros((), jnp.int32)}


def unbox(tree):
  return nn.meta.unbox(tree)
