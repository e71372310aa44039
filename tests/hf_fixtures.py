"""Small random HF models built offline for the converter tests (not a test
module; import it after `pytest.importorskip("torch")` and ("transformers"))."""
import numpy as np
import torch
import transformers

from metalm_jax import params_io

# The converters' float32 tolerance: max|ours - ref| / max|ref| <= RTOL.
RTOL = 1e-4

CLIP_CFGS = [
    dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
         image_size=32, patch_size=8),
    dict(hidden_size=48, intermediate_size=96, num_hidden_layers=3, num_attention_heads=3,
         image_size=28, patch_size=7, layer_norm_eps=1e-6),
    dict(hidden_size=64, intermediate_size=80, num_hidden_layers=2, num_attention_heads=8,
         image_size=16, patch_size=4, hidden_act="gelu"),
]
BERT_CFGS = [
    dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
         vocab_size=61, max_position_embeddings=40),
    dict(hidden_size=48, intermediate_size=72, num_hidden_layers=3, num_attention_heads=6,
         vocab_size=100, max_position_embeddings=64, hidden_act="relu", type_vocab_size=3),
    dict(hidden_size=40, intermediate_size=64, num_hidden_layers=2, num_attention_heads=5,
         vocab_size=77, max_position_embeddings=48, hidden_act="gelu_new", layer_norm_eps=1e-5),
]
ROBERTA_CFGS = [
    dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
         vocab_size=70, max_position_embeddings=42, type_vocab_size=1, pad_token_id=1),
    dict(hidden_size=48, intermediate_size=96, num_hidden_layers=1, num_attention_heads=2,
         vocab_size=90, max_position_embeddings=40, type_vocab_size=1, pad_token_id=3,
         hidden_act="quick_gelu"),
]
GPT2_CFGS = [
    dict(n_embd=32, n_layer=1, n_head=4, vocab_size=53, n_positions=40),
    dict(n_embd=48, n_layer=3, n_head=6, vocab_size=97, n_positions=64, n_inner=80,
         activation_function="gelu", layer_norm_epsilon=1e-6),
    dict(n_embd=64, n_layer=2, n_head=2, vocab_size=71, n_positions=36,
         activation_function="relu", tie_word_embeddings=False),
]
def build_hf(cfg_cls, model_cls, kw):
  """transformers.MODEL_CLS(transformers.CFG_CLS(**kw)), randomly initialised."""
  return getattr(transformers, model_cls)(getattr(transformers, cfg_cls)(**kw))


def save_hf(model, path, seed):
  """Perturbs every weight (so zero biases and unit norms are not trivially
  mapped), then writes an HF model dir."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.1 * torch.randn(p.shape, generator=g))
  model.save_pretrained(str(path))
  return str(path)


def assert_same_params(tree, other) -> None:
  """Two params trees with the same names and bit-identical arrays."""
  a, b = params_io.flatten(tree), params_io.flatten(other)
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(np.asarray(a[k]), b[k], err_msg=k)
