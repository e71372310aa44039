"""Small model configs and batch builders shared by the model tests."""
import jax
import jax.numpy as jnp
import numpy as np

from metalm_jax import batch as batch_lib
from metalm_jax import presets
from metalm_jax.models import metalm


def small_model_cfg(positions="learned", norm="pre", **dec):
  cfg = presets.model_config("tiny")
  dec = {"vocab_size": 97, **dec}
  cfg.decoder.update(dict(num_layers=2, emb_dim=32, num_heads=4, mlp_dim=64,
                          max_len=64, positions=positions, norm=norm, **dec))
  cfg.encoders.vision.update(dict(image_size=16, patch_size=8, num_layers=1, emb_dim=24,
                                  num_heads=2, mlp_dim=48, max_items=2))
  cfg.encoders.text.update(dict(vocab_size=97, max_items=2, max_len=6, num_layers=1, emb_dim=16,
                                num_heads=2, mlp_dim=32))
  return cfg


def random_batch(model, b=2, l=24, seed=0, dock=True, left_pad=(0, 3)):
  """A contract batch: random tokens, one image span (5 = 4 patches + cls)
  docked at positions 2..6 of each row, one text span at 10..13."""
  rng = np.random.default_rng(seed)
  cfg = model.cfg
  batch = batch_lib.dummy_batch(cfg, b, l)
  batch["tokens"] = rng.integers(0, cfg.decoder.vocab_size, (b, l)).astype(np.int32)
  batch["targets"] = np.roll(batch["tokens"], -1, axis=1)
  seg = np.ones((b, l), np.int32)
  for i, p in enumerate(left_pad[:b]):
    seg[i, :p] = 0
  batch["segment_ids"] = seg
  batch["positions"] = np.maximum(np.cumsum(seg, 1) - 1, 0).astype(np.int32)
  vis = batch["encoders"]["vision"]
  vis["pixels"] = rng.normal(size=vis["pixels"].shape).astype(np.float32)
  vis["valid"][:, 0] = True
  txt = batch["encoders"]["text"]
  txt["tokens"] = rng.integers(0, cfg.decoder.vocab_size, txt["tokens"].shape).astype(np.int32)
  txt["mask"][:, 0, :4] = True
  if dock:
    off = batch_lib.dock_offsets(cfg.encoders)
    t_img = batch_lib.slot_length(cfg.encoders.vision)
    start = max(left_pad[:b]) + 1
    batch["dock_mask"][:, start:start + t_img] = True
    batch["dock_index"][:, start:start + t_img] = off["vision"] + np.arange(t_img)
    s2 = start + t_img + 2
    batch["dock_mask"][:, s2:s2 + 4] = True
    batch["dock_index"][:, s2:s2 + 4] = off["text"] + np.arange(4)
    txt["tokens"][:, 0, :4] = batch["tokens"][:, s2:s2 + 4]
  batch["loss_mask"] = (seg > 0).astype(np.float32)
  batch["loss_mask"][:, :-1] *= ~batch["dock_mask"][:, 1:]
  return batch


_BUILT = {}


def build(cfg, seed=0, b=2, l=24):
  """(model, variables), cached per config so tests share one init."""
  key = (cfg.to_json(), seed)
  if key not in _BUILT:
    model = metalm.build_model(cfg)
    _BUILT[key] = (model, metalm.init_variables(model, jax.random.key(seed), 1, 8))
  return _BUILT[key]


_JITTED = {}


def forward(model, variables, batch, **kw):
  """Jitted model.apply (one compile per model, method and shapes)."""
  method = kw.pop("method", None)
  key = (id(model), method)
  if key not in _JITTED:
    _JITTED[key] = jax.jit(lambda v, b: model.apply(v, b, method=method),
                           compiler_options=metalm.FAST_COMPILE)
  return np.asarray(_JITTED[key](variables, to_jnp(batch)))


def to_jnp(tree):
  return jax.tree.map(jnp.asarray, tree)


def numpy_attention(x, p, mask):
  """layers.Attention in numpy (float64 for float64 inputs): params `p` of
  {query,key,value,out}.{kernel,bias}, boolean `mask` [B,1|H,Lq,Lk]."""
  q = np.einsum("bte,ehd->bthd", x, p["query"]["kernel"]) + p["query"]["bias"]
  k = np.einsum("bte,ehd->bthd", x, p["key"]["kernel"]) + p["key"]["bias"]
  v = np.einsum("bte,ehd->bthd", x, p["value"]["kernel"]) + p["value"]["bias"]
  s = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
  s = np.where(mask, s, -np.inf)
  w = np.exp(s - s.max(-1, keepdims=True))
  w /= w.sum(-1, keepdims=True)
  o = np.einsum("bhqk,bkhd->bqhd", w, v)
  return np.einsum("bqhd,hde->bqe", o, p["out"]["kernel"]) + p["out"]["bias"]
