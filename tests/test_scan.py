"""Scanned layers (nn.scan, params stacked on a `layers` axis) against the
unrolled stack: same params tree up to the layout conversion, same outputs,
same KV-cache decoding (greedy and beam), and sharding of the stacked axis."""
import flax.linen as nn
import jax
import numpy as np

from metalm_jax.evaluate import decode, prompts
from metalm_jax.models import layout, metalm
from tests.model_fixtures import build, forward, random_batch, small_model_cfg
from tests.decode_fixtures import FakeTokenizer

ATOL = 1e-5  # float32 at tiny widths; observed differences ~1e-7


def scan_cfg(scan: bool, **dec):
  """small_model_cfg with 3 decoder, 2 vision and 2 text layers (all stacks
  scanned or all unrolled)."""
  cfg = small_model_cfg(**dec)
  cfg.decoder.num_layers = 3
  cfg.encoders.vision.num_layers = 2
  cfg.encoders.text.num_layers = 2
  for section in (cfg.decoder, cfg.encoders.vision, cfg.encoders.text):
    section.scan_layers = scan
  return cfg


def pair(positions="rotary", norm="pre"):
  """(unrolled model, scanned model, unrolled params, the same stacked).
  Rotary positions: the positions reach every scanned layer."""
  m_u, v_u = build(scan_cfg(False, positions=positions, norm=norm))
  m_s = metalm.build_model(scan_cfg(True, positions=positions, norm=norm))
  params = nn.meta.unbox(v_u["params"])
  return m_u, m_s, params, layout.stack(params)


def test_scanned_params_are_the_stacked_unrolled_tree():
  m_u, m_s, params, stacked = pair()
  abstract = nn.meta.unbox(metalm.abstract_variables(m_s)["params"])
  shapes = lambda t: jax.tree.map(lambda x: tuple(x.shape), t)
  assert shapes(abstract) == shapes(stacked)
  assert abstract["decoder"]["layers"]["attn"]["query"]["kernel"].shape == (3, 32, 4, 8)
  assert "layers_0" not in abstract["decoder"] and "layers" not in params["decoder"]
  # The stacked axis carries its own logical name (mapped to no mesh axis).
  boxed = metalm.abstract_variables(m_s)["params"]
  names = boxed["encoders_vision"]["vit"]["layers"]["mlp"]["wi"]["kernel"].names
  assert names == ("layers", "embed", "mlp")
  back = layout.unstack(stacked)
  for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(params)):
    np.testing.assert_array_equal(a, b)


def test_scanned_forward_equals_unrolled():
  m_u, m_s, params, stacked = pair()
  b = random_batch(m_u)  # an image and a text span docked, one row left-padded
  out_u = forward(m_u, {"params": params}, b)
  out_s = forward(m_s, {"params": stacked}, b)
  np.testing.assert_allclose(out_s, out_u, atol=ATOL, rtol=1e-5)


def _decode_setup():
  m_u, m_s, params, stacked = pair()
  params = dict(params, decoder=dict(params["decoder"]))
  # Sharper logits (final LayerNorm x20): float32 round-off cannot flip a token.
  params["decoder"]["final_norm"] = jax.tree.map(lambda x: 20 * x, params["decoder"]["final_norm"])
  stacked = layout.stack(params)
  pix = np.random.default_rng(0).normal(size=(16, 16, 3)).astype(np.float32)
  batch = prompts.build_batch(
      [[prompts.Image(pix), prompts.Text("question: what color answer:")],
       [prompts.Text("a cat is")]], FakeTokenizer(), m_u.cfg)
  return m_u, m_s, params, stacked, batch


def test_scanned_kv_cache_is_stacked_and_decodes_the_same_tokens():
  m_u, m_s, params, stacked, batch = _decode_setup()
  cache = decode.init_cache(m_s, 2, 20)
  k = cache["decoder"]["layers"]["attn"]["cached_key"]
  assert k.shape == (2, 3, 4, 20, 8)  # [batch, layer, heads, cache, head_dim]
  assert cache["decoder"]["layers"]["attn"]["cache_index"].shape == (2, 3)
  g_u = decode.greedy(m_u, params, batch, max_new_tokens=6, eos_id=None)
  g_s = decode.greedy(m_s, stacked, batch, max_new_tokens=6, eos_id=None)
  np.testing.assert_array_equal(g_s.ids, g_u.ids)
  np.testing.assert_allclose(g_s.scores, g_u.scores, atol=1e-4)
  b_u = decode.beam_search(m_u, params, batch, beam_size=3, max_new_tokens=5, eos_id=None)
  b_s = decode.beam_search(m_s, stacked, batch, beam_size=3, max_new_tokens=5, eos_id=None)
  np.testing.assert_array_equal(b_s.ids, b_u.ids)
  np.testing.assert_allclose(b_s.scores, b_u.scores, atol=1e-4)
