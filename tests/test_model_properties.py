"""Model properties for every registered modality, without per-modality code.

One small MetaLM holds one encoder of every registered modality
(models/modalities/), built from its record's preset with generic shrink fields; its random batch is
built from batch.batch_spec alone (floats normal, ints below the encoder's
vocab_size, bool arrays are validity masks over the leading dims of the data
arrays: item 0 valid, the last third of a per-element mask padding, the other
items invalid) and docks item 0 of every encoder. Each property is a test
parametrized by modality, so registering a modality adds its cases:

  causal     the decoder at positions before a docked span sees neither the
             span's item nor later tokens; the span's positions do see it
  docking    input embeddings at the docked positions equal
             connector(encoder(inputs)) run on their own; elsewhere the token
             embeddings
  padding    invalid items, padded elements, token ids under docked positions,
             padding positions and dock_index where nothing is docked change
             no real position's logits
  nonfinite  NaN in every padded float input leaves the loss and every
             gradient finite
  sharded    a data x fsdp x tensor (2x2x2) mesh of 8 fake CPU devices gives
             the single-device logits and embeddings; every encoder and
             connector param carries logical axis names, some are on fsdp

A newly registered modality runs every case here without further edits.
Compiles are shared: random params from the abstract shapes (no init
compile), one single-device and one sharded forward (logits and input
embeddings together), one encoder+connector per modality.
"""
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from metalm_jax import batch as batch_lib
from metalm_jax import presets
from metalm_jax.models import metalm
from metalm_jax.models.connector import CONNECTORS
from metalm_jax.models import modalities

ATOL = 1e-5  # float32, tiny widths: observed differences are ~1e-7
B = 4        # one row per (data, fsdp) shard of the 2x2x2 mesh
VOCAB = 96   # divisible by the tensor axis
# Applied to a preset wherever it has the field (tiny, shardable shapes).
SHRINK = dict(max_items=2, num_layers=1, emb_dim=16, num_heads=2, mlp_dim=32, image_size=16,
              patch_size=8, max_len=6, vocab_size=VOCAB, temporal_layers=1)
# Every registered modality, by its encoder type (the config's `type`).
MODALITIES = sorted(modalities.encoder_types())


def test_every_modality_record_is_whole():
  """Each record's preset builds its own encoder type, its encoder is a flax
  module, and whole-item modalities have brackets and the input `valid`."""
  assert set(MODALITIES) >= {"vit", "bert", "whisper", "video"}
  for name in modalities.MODALITIES:
    m = modalities.MODALITIES.get(name)
    cfg = m.preset()
    assert cfg.type == m.encoder_type, (name, cfg.type)
    assert issubclass(m.encoder, nn.Module), name
    spec = m.inputs(cfg, 3)
    assert m.key in spec and all(shape[0] == 3 for shape, _ in spec.values()), (name, spec)
    assert m.slot_length(cfg) >= 1
    if m.docks_whole_items:
      assert m.brackets is not None and "valid" in spec, name


def test_a_second_record_of_a_taken_encoder_type_is_refused():
  image = modalities.MODALITIES.get("image")
  with pytest.raises(ValueError, match="encoder type 'vit' of modality 'image2' is already"):
    modalities.register(dataclasses.replace(image, name="image2"))
  assert "image2" not in modalities.MODALITIES


def encoder_cfg(t):
  build = modalities.by_encoder_type(t).preset
  return build(**{k: v for k, v in SHRINK.items() if k in build()})


# ---- generic batch ------------------------------------------------------------
def _validity(shape, rng):
  """A bool validity array [B, N, ...]: item 0 valid (a per-element mask pads
  the last third of its last axis), items 1.. invalid."""
  m = np.zeros(shape, bool)
  m[:, 0] = True
  if len(shape) > 2:
    m[:, 0, ..., shape[-1] - shape[-1] // 3:] = False
  return m


def _random(shape, dtype, enc_cfg, rng):
  if np.dtype(dtype) == np.bool_:
    return _validity(shape, rng)
  if np.issubdtype(dtype, np.integer):
    return rng.integers(0, enc_cfg.get("vocab_size", 2), shape).astype(dtype)
  return rng.standard_normal(shape).astype(dtype)


def _masks(inputs):
  return {k: v for k, v in inputs.items() if v.dtype == np.bool_}


def padding_of(inputs, key):
  """bool, shape of inputs[key]: True where a validity mask (a bool array
  whose shape is a prefix of the data's) marks padding."""
  x = inputs[key]
  pad = np.zeros(x.shape, bool)
  for m in _masks(inputs).values():
    if x.shape[:m.ndim] == m.shape:
      pad |= ~m.reshape(m.shape + (1,) * (x.ndim - m.ndim))
  return pad


def dockable(inputs, t_len):
  """bool [B, N, T]: the vectors of each item that may be docked."""
  masks = _masks(inputs)
  assert masks, "an encoder's inputs need a bool validity array (batch.py)"
  out = np.ones(next(iter(masks.values())).shape[:2] + (t_len,), bool)
  for k, m in masks.items():
    if m.ndim == 2:
      out &= m[:, :, None]
    elif m.shape[2:] == (t_len,):
      out &= m
    else:
      raise AssertionError(f"validity array {k!r} {m.shape} covers neither items nor vectors")
  return out


def build_batch(cfg, rng):
  """(batch, spans {name: [(start, docked vector ids)] per row}, real [B, L])."""
  names = sorted(cfg.encoders)
  encoders = {name: {k: _random(s, d, cfg.encoders[name], rng)
                     for k, (s, d) in spec.items()}
              for name, spec in batch_lib.batch_spec(cfg, B, 1)["encoders"].items()}
  ids = {n: np.flatnonzero(dockable(encoders[n], batch_lib.slot_length(cfg.encoders[n]))[0, 0])
         for n in names}
  pads = [2 * (b % 2) for b in range(B)]  # odd rows are left-padded
  length = max(pads) + 3 + sum(len(ids[n]) + 2 for n in names) + 1
  batch = batch_lib.dummy_batch(cfg, B, length)
  batch["encoders"] = encoders
  batch["tokens"] = rng.integers(0, VOCAB, (B, length)).astype(np.int32)
  batch["targets"] = np.roll(batch["tokens"], -1, axis=1)
  off = batch_lib.dock_offsets(cfg.encoders)
  spans = {n: [] for n in names}
  for b, pad in enumerate(pads):
    batch["segment_ids"][b, pad:] = 1
    batch["positions"][b, pad:] = np.arange(length - pad)
    cursor = pad + 3
    for n in names:
      pos = cursor + np.arange(len(ids[n]))
      batch["dock_mask"][b, pos] = True
      batch["dock_index"][b, pos] = off[n] + ids[n]  # item 0
      spans[n].append((cursor, ids[n]))
      cursor = pos[-1] + 3
  real = batch["segment_ids"] > 0
  batch["loss_mask"] = real.astype(np.float32)
  batch["loss_mask"][:, :-1] *= ~batch["dock_mask"][:, 1:]
  batch_lib.validate_batch(batch, cfg, VOCAB)
  return batch, spans, real


# ---- the shared model -----------------------------------------------------------
class World:
  """The model, its variables, a batch and the shared jitted forward."""

  def __init__(self):
    cfg = presets.model_config("tiny")
    cfg.decoder.update(vocab_size=VOCAB, num_layers=2, emb_dim=32, num_heads=4, mlp_dim=64,
                       max_len=64)
    cfg.encoders = {t: encoder_cfg(t) for t in MODALITIES}
    self.model = metalm.build_model(cfg)
    self.cfg = self.model.cfg
    # Random params of the model's shapes, boxes kept (compiling the init costs
    # more than every forward here): LayerNorm scales near 1, the rest small.
    rng = np.random.default_rng(0)
    def value(path, s):
      base = 1.0 if jax.tree_util.keystr(path).endswith("['scale']") else 0.0
      return (base + 0.2 * rng.standard_normal(s.shape)).astype(s.dtype)
    self.variables = jax.tree_util.tree_map_with_path(value, metalm.abstract_variables(self.model))
    self.params = nn.meta.unbox(self.variables["params"])
    self.batch, self.spans, self.real = build_batch(self.cfg, np.random.default_rng(0))
    self._fn = self._forward_fn()
    self._run = jax.jit(self._fn, compiler_options=metalm.FAST_COMPILE)
    self._sharded = None
    self._grad = None

  def _forward_fn(self):
    """One forward returning the logits and the decoder's input embeddings
    (captured from MetaLM.input_embeddings)."""
    model = self.model
    def capture(mdl, method):
      return isinstance(mdl, metalm.MetaLM) and method == "input_embeddings"
    def fn(v, b):
      logits, state = model.apply(v, b, capture_intermediates=capture, mutable=["intermediates"])
      return logits, state["intermediates"]["input_embeddings"][0]
    return fn

  def run(self, batch):
    """(logits [B, L, V], input embeddings [B, L, D]) as numpy."""
    return tuple(np.asarray(x) for x in self._run(self.variables, to_jnp(batch)))

  def loss_and_grads(self, batch):
    """(mean cross-entropy over loss_mask, its gradients w.r.t. the params)."""
    if self._grad is None:
      model = self.model
      def loss_fn(params, b):
        logits = model.apply({"params": params}, b)
        ce = -jnp.take_along_axis(jax.nn.log_softmax(logits), b["targets"][..., None], -1)[..., 0]
        return (ce * b["loss_mask"]).sum() / b["loss_mask"].sum()
      self._grad = jax.jit(jax.value_and_grad(loss_fn), compiler_options=metalm.FAST_COMPILE)
    loss, grads = self._grad(self.params, to_jnp(batch))
    return float(loss), grads

  def sharded(self):
    """(logits, embeddings, param shardings) on the 2x2x2 mesh (computed once)."""
    if self._sharded is None:
      mesh = Mesh(np.asarray(jax.devices()[:8]).reshape(2, 2, 2), ("data", "fsdp", "tensor"))
      rules = presets.logical_rules()
      specs = nn.get_partition_spec(metalm.abstract_variables(self.model))
      shardings = nn.logical_to_mesh_sharding(specs, mesh, rules)
      v = jax.device_put(self.variables, shardings)
      b = jax.device_put(to_jnp(self.batch), NamedSharding(mesh, PartitionSpec(("data", "fsdp"))))
      with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        out = jax.jit(self._fn, compiler_options=metalm.FAST_COMPILE)(v, b)
      emb = v["params"]["decoder"]["embedder"]["embedding"].value
      self._sharded = tuple(np.asarray(x) for x in out) + (shardings["params"], emb)
    return self._sharded


def to_jnp(tree):
  return jax.tree.map(jnp.asarray, tree)


_WORLD = []


@pytest.fixture
def world():
  if not _WORLD:
    _WORLD.append(World())
  return _WORLD[0]


@pytest.fixture(params=MODALITIES)
def modality(request):
  return request.param


def perturb(world, name, select, seed):
  """A copy of the batch whose encoder `name` inputs get new values where
  select(inputs, key) is True (every non-bool array)."""
  rng = np.random.default_rng(seed)
  batch = jax.tree.map(np.copy, world.batch)
  inputs = batch["encoders"][name]
  vocab = world.cfg.encoders[name].get("vocab_size", 2)
  for k, x in inputs.items():
    if x.dtype == np.bool_:
      continue
    sel = select(inputs, k)
    if np.issubdtype(x.dtype, np.integer):
      new = (x + rng.integers(1, vocab, x.shape)) % vocab
    else:
      new = x + rng.standard_normal(x.shape).astype(x.dtype)
    inputs[k] = np.where(sel, new, x).astype(x.dtype)
  return batch


def item0(inputs, key):
  """item 0's real (non-padding) elements."""
  sel = ~padding_of(inputs, key)
  sel[:, 1:] = False
  return sel


# ---- the properties ---------------------------------------------------------------
def test_causal(world, modality):
  logits, _ = world.run(world.batch)
  batch = perturb(world, modality, item0, seed=1)
  rng = np.random.default_rng(2)
  for b, (start, ids) in enumerate(world.spans[modality]):
    after = start + len(ids)  # tokens after the span change too
    batch["tokens"][b, after:] = (batch["tokens"][b, after:] + rng.integers(
        1, VOCAB, batch["tokens"].shape[1] - after)) % VOCAB
  out, _ = world.run(batch)
  for b, (start, ids) in enumerate(world.spans[modality]):
    before = world.real[b, :start]
    np.testing.assert_allclose(out[b, :start][before], logits[b, :start][before], atol=ATOL)
    span = slice(start, start + len(ids))
    assert np.abs(out[b, span] - logits[b, span]).max() > 1e-4  # the span sees its item


def test_docking_equals_connector_of_encoder(world, modality):
  cfg, name = world.cfg.encoders[modality], modality
  _, emb = world.run(world.batch)
  encoder = modalities.by_encoder_type(cfg.type).encoder(cfg)
  connector = CONNECTORS.get(cfg.connector.type)(cfg.connector, world.cfg.decoder.emb_dim)

  @jax.jit
  def independent(enc_p, conn_p, inputs):
    return connector.apply({"params": conn_p}, encoder.apply({"params": enc_p}, inputs))

  ref = np.asarray(independent(world.params[f"encoders_{name}"],
                               world.params[f"connectors_{name}"],
                               to_jnp(world.batch["encoders"][name])))  # [B, N, T, D]
  for b, (start, ids) in enumerate(world.spans[name]):
    np.testing.assert_allclose(emb[b, start:start + len(ids)], ref[b, 0, ids], atol=ATOL)
  undocked = ~world.batch["dock_mask"]
  tok = world.params["decoder"]["embedder"]["embedding"][world.batch["tokens"]]
  np.testing.assert_allclose(emb[undocked], np.asarray(tok)[undocked], atol=0)


def test_padding_changes_nothing(world, modality):
  logits, emb = world.run(world.batch)
  batch = perturb(world, modality, padding_of, seed=3)
  changed = sum(int((batch["encoders"][modality][k] != world.batch["encoders"][modality][k]).sum())
                for k in batch["encoders"][modality])
  assert changed > 0  # there was padding to change
  rng = np.random.default_rng(4)
  docked_here = np.zeros_like(world.real)
  for b, (start, ids) in enumerate(world.spans[modality]):
    docked_here[b, start:start + len(ids)] = True
  ignored = docked_here | ~world.real  # token ids under the span, padding positions
  batch["tokens"] = np.where(ignored, rng.integers(0, VOCAB, ignored.shape), batch["tokens"]
                             ).astype(np.int32)
  n_vec = batch_lib.num_dock_vectors(world.cfg.encoders)
  batch["dock_index"] = np.where(batch["dock_mask"], batch["dock_index"], rng.integers(
      0, n_vec, ignored.shape)).astype(np.int32)
  out, out_emb = world.run(batch)
  np.testing.assert_allclose(out[world.real], logits[world.real], atol=ATOL)
  np.testing.assert_allclose(out_emb[world.real], emb[world.real], atol=ATOL)


def test_nonfinite_padding_stays_out_of_loss_and_gradients(world, modality):
  """NaN in every padded float input (invalid items, masked elements): the
  loss and every gradient stay finite, so a bad slot cannot poison a step."""
  batch = jax.tree.map(np.copy, world.batch)
  inputs = batch["encoders"][modality]
  floats = [k for k, x in inputs.items() if np.issubdtype(x.dtype, np.floating)]
  if not floats:
    pytest.skip(f"{modality}: no float inputs to hold NaN")
  for k in floats:
    inputs[k] = np.where(padding_of(inputs, k), np.nan, inputs[k]).astype(inputs[k].dtype)
  assert any(np.isnan(inputs[k]).any() for k in floats)
  loss, grads = world.loss_and_grads(batch)
  assert np.isfinite(loss)
  bad = [jax.tree_util.keystr(p) for p, g in jax.tree_util.tree_leaves_with_path(grads)
         if not np.isfinite(np.asarray(g)).all()]
  assert not bad, bad


def test_sharded_equals_single_device(world, modality):
  logits, emb = world.run(world.batch)
  s_logits, s_emb, shardings, s_table = world.sharded()
  np.testing.assert_allclose(s_logits[world.real], logits[world.real], atol=ATOL, rtol=1e-5)
  for b, (start, ids) in enumerate(world.spans[modality]):
    span = slice(start, start + len(ids))
    np.testing.assert_allclose(s_emb[b, span], emb[b, span], atol=ATOL, rtol=1e-5)
  # The decoder's embedding table is split: vocab over tensor, embed over fsdp.
  assert s_table.sharding.spec == PartitionSpec("tensor", "fsdp")
  assert s_table.addressable_shards[0].data.shape == (VOCAB // 2, 32 // 2)
  # Every param of this modality's encoder and connector has logical axis names.
  on_fsdp = 0
  is_box = lambda x: isinstance(x, nn.LogicallyPartitioned)
  for part in (f"encoders_{modality}", f"connectors_{modality}"):
    for path, x in jax.tree_util.tree_leaves_with_path(world.variables["params"][part],
                                                       is_leaf=is_box):
      where = f"{part}{jax.tree_util.keystr(path)}"
      assert is_box(x) and len(x.names) == x.value.ndim, f"{where} has no logical axis names"
    on_fsdp += sum("fsdp" in jax.tree.leaves(tuple(s.spec)) for s in jax.tree.leaves(
        shardings[part], is_leaf=lambda s: isinstance(s, NamedSharding)))
  assert on_fsdp > 0, f"no param of encoder {modality!r} is sharded over fsdp"
