"""The language-only variants of configs/pretrain_lang.py: the same-size GPT
baseline (`baseline=gpt`, presets.gpt_baseline) and DeepNorm (`norm=deepnorm`,
the paper_lang preset's norm): configs, params, batches, one training step."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import pretrain_lang
from metalm_jax import presets
from metalm_jax.data import pipeline
from metalm_jax.models import decoder as decoder_lib
from metalm_jax.models import metalm, stack
from metalm_jax.train import trainer as trainer_lib
from tests.train_standin import CACHE_DIR

SMALL = dict(num_layers=1, emb_dim=32, num_heads=2, mlp_dim=64)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("tfds"))


def _on_test_world(c, data_dir):
  c.data.data_dir, c.data.world = data_dir, "test"
  return c


def _names_shapes(tree):
  return {jax.tree_util.keystr(p): x.shape for p, x in jax.tree_util.tree_leaves_with_path(tree)}


@pytest.mark.parametrize("size", ["tiny", "paper"])
def test_gpt_baseline_is_metalms_decoder_and_nothing_else(size):
  meta = pretrain_lang.get_config(f"size={size}")
  gpt = pretrain_lang.get_config(f"size={size},baseline=gpt")
  assert gpt.model.decoder.to_dict() == meta.model.decoder.to_dict()
  assert gpt.model.dtype == meta.model.dtype and not gpt.model.encoders
  assert meta.model.encoders and not gpt.optimizer.groups
  # The same tokenizer, token stream settings and mixture; spans off.
  for key in ("tokenizer", "seq_len", "mixture", "world", "max_doc_tokens"):
    assert gpt.data[key] == meta.data[key], key
  assert meta.data.spans.encoder == "text" and gpt.data.spans.encoder == ""
  p_meta = metalm.abstract_variables(metalm.build_model(meta.model))["params"]
  p_gpt = metalm.abstract_variables(metalm.build_model(gpt.model))["params"]
  assert set(p_gpt) == {"decoder"} and {"encoders_text", "connectors_text"} <= set(p_meta)
  assert _names_shapes(p_gpt["decoder"]) == _names_shapes(p_meta["decoder"])
  trainer_lib.check_config(gpt, num_devices=8 if size == "tiny" else 256,
                           process_count=1 if size == "tiny" else 64)


def test_gpt_baseline_batches_are_metalms_tokens_with_nothing_docked(data_dir):
  meta = _on_test_world(pretrain_lang.get_config("size=tiny"), data_dir)
  gpt = _on_test_world(pretrain_lang.get_config("size=tiny,baseline=gpt"), data_dir)
  it_m = pipeline.make_iterator(meta, "train", batch_size=4)
  it_g = pipeline.make_iterator(gpt, "train", batch_size=4)
  docked = 0
  for _ in range(3):
    bm, _ = pipeline.split_stats(next(it_m))
    bg, _ = pipeline.split_stats(next(it_g))
    for key in ("tokens", "targets", "segment_ids", "positions"):
      np.testing.assert_array_equal(bg[key], bm[key], err_msg=key)
    assert bg["encoders"] == {} and not bg["dock_mask"].any()
    docked += int(bm["dock_mask"].sum())
    # Plain causal LM: every position whose next token is in its segment is trained.
    seg = bg["segment_ids"]
    nxt_same = np.zeros_like(seg, bool)
    nxt_same[:, :-1] = (seg[:, :-1] == seg[:, 1:]) & (seg[:, :-1] > 0)
    np.testing.assert_array_equal(bg["loss_mask"] > 0, nxt_same)
    assert bm["loss_mask"].sum() < bg["loss_mask"].sum()  # MetaLM skips span targets
  assert docked > 0  # the MetaLM rows did dock spans: the comparison means something


def test_paper_lang_decoder_is_deepnorm_with_the_papers_alpha_beta():
  cfg = presets.model_config("paper_lang")
  assert cfg.decoder.norm == "deepnorm" and cfg.decoder.num_layers == 24
  (block,) = stack.build(cfg.decoder, jnp.float32, causal=True)  # scanned: one module
  # DeepNet (Wang et al. 2022), decoder-only with N layers: alpha = (2N)^(1/4),
  # beta = (8N)^(-1/4); N = 24: 48^(1/4) and 192^(-1/4).
  assert block.deepnorm_alpha == pytest.approx(2.6321480, rel=1e-6)
  assert block.deepnorm_beta == pytest.approx(0.2686425, rel=1e-6)
  assert pretrain_lang.get_config("size=paper,norm=pre").model.decoder.norm == "pre"
  with pytest.raises(ValueError, match="config arg norm=.postln. is unknown"):
    pretrain_lang.get_config("norm=postln")
  with pytest.raises(ValueError, match="config arg baseline=.bert. is unknown"):
    pretrain_lang.get_config("baseline=bert")


def test_tiny_deepnorm_scales_init_by_beta():
  """The tiny decoder with norm=deepnorm: value, output and MLP kernels are
  beta = (8 * 2)^(-1/4) = 0.5 times those of pre-LN from the same key; the
  query kernel is not scaled; no final norm."""
  got = {}
  for norm in ("pre", "deepnorm"):
    c = pretrain_lang.get_config(f"size=tiny,norm={norm}")
    dec = decoder_lib.Decoder(c.model.decoder)
    z = jnp.zeros((1, 4), jnp.int32)
    got[norm] = nn.meta.unbox(jax.jit(dec.init)(jax.random.key(0), z, z, z + 1)["params"])
  pre, deep = got["pre"], got["deepnorm"]
  assert "final_norm" in pre and "final_norm" not in deep
  for i in range(2):
    lp, ld = pre[f"layers_{i}"], deep[f"layers_{i}"]
    for a, b in [(lp["attn"][k]["kernel"], ld["attn"][k]["kernel"]) for k in ("value", "out")] + \
                [(lp["mlp"][k]["kernel"], ld["mlp"][k]["kernel"]) for k in ("wi", "wo")]:
      np.testing.assert_allclose(b, 0.5 * a, rtol=1e-6, atol=1e-9)
    np.testing.assert_array_equal(ld["attn"]["query"]["kernel"], lp["attn"]["query"]["kernel"])


@pytest.mark.integration
@pytest.mark.parametrize("arg", ["norm=deepnorm", "baseline=gpt"])
def test_tiny_variant_trains_one_step(data_dir, tmp_path, arg):
  c = _on_test_world(pretrain_lang.get_config(f"size=tiny,steps=1,{arg}"), data_dir)
  for part in [c.model.decoder, *c.model.encoders.values()]:
    part.update(SMALL)
  c.batch_size, c.log.every_steps, c.eval_loss.every_steps = 4, 1, 0
  c.metrics.peak_flops = 1e12
  c.checkpoint.async_save = False
  c.mesh.update(data=1, fsdp=1, tensor=1)
  c.compilation_cache_dir = CACHE_DIR  # the same programs compile once per machine
  out = trainer_lib.train(c, str(tmp_path / "run"), devices=jax.devices()[:1])
  assert out["step"] == 1 and np.isfinite(out["loss"]) and out["loss"] > 0
