"""A run whose decoder is an imported HF model with its own tokenizer: a
random small LlamaForCausalLM (untied lm_head) and a byte-level BPE
tokenizer.json trained offline on the test world (Llama's `<unk>`, `<s>`,
`</s>`), imported with `import-hf --component=decoder` (the project's
specials added as new rows), trained a few steps on the tiny test world
through the trainer's Python API. The loss is finite and falls, the rows of
the added tokens the rows use train (those never used do not move: weight
decay is off), and the workdir's tokenizer is the augmented tokenizer.json."""
import json
import os

import flax.linen as nn
import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

from configs import pretrain_vl  # noqa: E402
from metalm_jax import params_io, run_files  # noqa: E402
from metalm_jax.convert import hf  # noqa: E402
from metalm_jax.data.hf_tokenizer import HfTokenizer  # noqa: E402
from metalm_jax.models import metalm  # noqa: E402
from metalm_jax.train import checkpoint as ckpt_lib  # noqa: E402
from metalm_jax.train import trainer as trainer_lib  # noqa: E402
from tests import world_config as testing  # noqa: E402
from tests.hf_fixtures import build_hf, save_hf  # noqa: E402
from tests.hf_tokenizer_fixtures import LLAMA_SPECIALS, world_bpe  # noqa: E402

pytestmark = pytest.mark.integration

STEPS = 10
LLAMA = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=False,
             bos_token_id=1, eos_token_id=2, rms_norm_eps=1e-5)
SMALL = dict(num_layers=1, emb_dim=32, num_heads=2, mlp_dim=64)


def _llama_dir(tmp_path, data_cfg):
  """A random small HF Llama dir with a BPE tokenizer.json of the world."""
  raw = str(tmp_path / "tokenizer.json")
  n = world_bpe(data_cfg, raw, LLAMA_SPECIALS).get_vocab_size()
  d = save_hf(build_hf("LlamaConfig", "LlamaForCausalLM", dict(LLAMA, vocab_size=n)),
              tmp_path / "llama", seed=3)
  os.replace(raw, os.path.join(d, "tokenizer.json"))
  with open(os.path.join(d, "special_tokens_map.json"), "w") as f:
    json.dump({"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}, f)
  return d, n


def test_imported_llama_trains_on_the_world_with_its_tokenizer(tmp_path):
  data = testing.test_config("vl", "tiny", str(tmp_path / "tfds")).data
  d, n = _llama_dir(tmp_path, data)
  out = str(tmp_path / "dec")
  imp = hf.import_hf(d, "decoder", out)
  init, meta = params_io.load_params(out)
  added = meta["added_tokens"]
  assert sorted(added.values()) == list(range(n, n + 7)) and imp.section.vocab_size == n + 7
  tok = HfTokenizer(os.path.join(out, "tokenizer.json"))
  assert (tok.bos, tok.eos) == (1, 2) and tok.image_start == added["<image>"]

  c = pretrain_vl.get_config(f"size=tiny,steps={STEPS}")
  c.data = data
  c.data.tokenizer = os.path.join(out, "tokenizer.json")
  c.data.mixture = {"world_caption": 0.6, "world_text": 0.4}  # uses <image>, </image>, <eop>
  c.model.decoder = imp.section
  for enc in (c.model.encoders.vision, c.model.encoders.text):
    enc.update(SMALL)
  c.model.encoders.text.vocab_size = imp.section.vocab_size  # the text encoder reads the same ids
  c.init_components = {"decoder": out}
  c.batch_size, c.log.every_steps, c.eval_loss.every_steps = 4, 1, 0
  c.optimizer.update(lr=1e-2, warmup_steps=1, weight_decay=0.0)
  c.checkpoint.update(async_save=False, every_steps=STEPS)
  c.mesh.update(data=1, fsdp=1, tensor=1)
  c.metrics.peak_flops = 1e11  # skip the start-up matmul measurement
  work = str(tmp_path / "run")
  result = trainer_lib.train(c, work, devices=jax.devices()[:1])
  assert result["step"] == STEPS

  rows = [json.loads(line) for line in open(os.path.join(work, "metrics.jsonl")) if line.strip()]
  loss = [r["loss"] for r in rows if "loss" in r]
  assert len(loss) == STEPS and np.all(np.isfinite(loss))
  assert np.mean(loss[-3:]) < np.mean(loss[:3]) - 0.3, loss

  one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = nn.meta.unbox(metalm.abstract_variables(metalm.build_model(c.model))["params"])
  target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=one), abstract)
  final = jax.device_get(ckpt_lib.restore_params(work, target))["decoder"]
  emb0, emb1 = init["embedder"]["embedding"], final["embedder"]["embedding"]
  used = [added[t] for t in ("<image>", "</image>", "<eop>")]
  unused = [added[t] for t in ("<audio>", "</audio>", "<video>", "</video>")]
  for i in used:
    assert np.abs(emb1[i] - emb0[i]).max() > 1e-3, i
  np.testing.assert_array_equal(emb1[unused], emb0[unused])
  head0, head1 = init["lm_head"]["kernel"], final["lm_head"]["kernel"]
  assert np.abs(head1[:, n:] - head0[:, n:]).max(axis=0).min() > 1e-3  # every new column trains
  # The run's tokenizer in the workdir is the augmented tokenizer.json.
  run_cfg = run_files.load_run_config(work)
  assert run_cfg["data"]["tokenizer"] == os.path.join(work, "tokenizer.json")
  assert open(run_cfg["data"]["tokenizer"]).read() == open(
      os.path.join(out, "tokenizer.json")).read()
  assert HfTokenizer(run_cfg["data"]["tokenizer"]).image_start == added["<image>"]
  assert os.path.exists(os.path.join(work, "special_tokens_map.json"))  # names bos / eos
