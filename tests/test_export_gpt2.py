"""Our decoder -> HF GPT-2 -> ours: transformers loads it with the same
logits (rel 1e-4, max|diff| / max|ref|), and the round trip is bit-exact."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import jax  # noqa: E402
import flax.linen as nn  # noqa: E402
import ml_collections  # noqa: E402

from metalm_jax import params_io  # noqa: E402
from metalm_jax import presets  # noqa: E402
from metalm_jax.convert import __main__ as cli  # noqa: E402
from metalm_jax.convert import hf, hf_gpt2  # noqa: E402
from metalm_jax.models.decoder import Decoder  # noqa: E402
from tests.hf_fixtures import assert_same_params  # noqa: E402


def _decoder(seed, **kw):
  section = presets.decoder(**kw)
  model = Decoder(ml_collections.FrozenConfigDict(section))
  t = np.zeros((1, 4), np.int32)
  params = nn.meta.unbox(model.init(jax.random.key(seed), t, t, t + 1)["params"])
  # Non-trivial norms and biases, so a swapped mapping cannot pass.
  leaves, tree = jax.tree.flatten(params)
  rng = np.random.default_rng(seed)
  leaves = [np.asarray(x) + 0.05 * rng.standard_normal(x.shape).astype(np.float32) for x in leaves]
  return section, model, jax.tree.unflatten(tree, leaves)


@pytest.mark.parametrize("kw", [
    dict(vocab_size=67, num_layers=2, emb_dim=32, num_heads=4, mlp_dim=64, max_len=24,
         activation="gelu_new"),
    dict(vocab_size=45, num_layers=1, emb_dim=48, num_heads=3, mlp_dim=96, max_len=20,
         activation="gelu", tie_embeddings=False, ln_eps=1e-6),
])
def test_round_trip(tmp_path, kw):
  section, model, params = _decoder(1, **kw)
  out = hf_gpt2.save_gpt2(str(tmp_path / "gpt2"), section, params)
  gpt2 = transformers.GPT2LMHeadModel.from_pretrained(out).eval()
  tokens = np.random.default_rng(0).integers(0, kw["vocab_size"], (2, 10)).astype(np.int32)
  pos = np.broadcast_to(np.arange(10, dtype=np.int32), (2, 10))
  ours = np.asarray(model.apply({"params": params}, tokens, pos, np.ones_like(tokens)))
  with torch.no_grad():
    ref = gpt2(input_ids=torch.from_numpy(tokens.astype(np.int64))).logits.numpy()
  assert np.abs(ours - ref).max() / np.abs(ref).max() <= 1e-4
  back = hf.load_hf(out, "decoder")
  assert back.skipped == []
  assert_same_params(params, back.tree)
  for field in ("vocab_size", "num_layers", "emb_dim", "num_heads", "mlp_dim", "max_len",
                "activation", "ln_eps", "tie_embeddings"):
    assert back.section[field] == section[field], field


def test_cli_export_gpt2_from_import_dir(tmp_path):
  section, _, params = _decoder(2, vocab_size=33, num_layers=1, emb_dim=16, num_heads=2,
                                mlp_dim=32, max_len=12, activation="gelu_new")
  params_io.save_params(str(tmp_path / "p"), params,
                        {"component": "decoder", "section": section.to_dict()})
  assert cli.main(["export-gpt2", f"--params_dir={tmp_path / 'p'}",
                   f"--out={tmp_path / 'hf'}"]) == 0
  back = hf.load_hf(str(tmp_path / "hf"), "decoder")
  np.testing.assert_array_equal(back.tree["layers_0"]["attn"]["value"]["kernel"],
                                np.asarray(params["layers_0"]["attn"]["value"]["kernel"]))


@pytest.mark.parametrize("field,value", [("norm", "deepnorm"), ("positions", "rotary"),
                                         ("use_bias", False), ("activation", "bogus")])
def test_non_gpt2_decoder_is_refused_by_field(field, value):
  with pytest.raises(ValueError, match=f"model.decoder.{field}"):
    hf_gpt2.gpt2_config(presets.decoder(**{field: value}))
