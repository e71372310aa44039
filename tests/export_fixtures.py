"""Shared helpers for the export and Predictor tests (no tests here): one tiny
model with a word-level tokenizer, exported once per pytest process (with
non-CLIP normalisation constants, so reading them is tested), a training
workdir of the same params, and a reference greedy decoder without a cache."""
import json
import os

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from metalm_jax import presets
from metalm_jax.convert import export
from metalm_jax.models import metalm

SPECIALS = ["<pad>", "<unk>", "<s>", "</s>", "<image>", "</image>"]
WORDS = ["Summarize", "this", "image", ":", "question", "answer", "what", "is", "?", "a",
         "cat", "dog", "red", "blue", "on", "the", "mat", "colour"]
SEQ_LEN = 24
MEAN = (0.5, 0.4, 0.3)   # not CLIP's: the export must carry these
STD = (0.2, 0.25, 0.3)


def model_cfg():
  return ml_collections.ConfigDict(dict(
      dtype="float32",
      decoder=presets.decoder(vocab_size=64, num_layers=2, emb_dim=32, num_heads=2, mlp_dim=64,
                             max_len=48, activation="gelu_new"),
      encoders=dict(
          vision=presets.vit(image_size=16, patch_size=8, num_layers=1, emb_dim=24, num_heads=2,
                            mlp_dim=48),
          text=presets.bert(max_items=1, max_len=4, vocab_size=64, num_layers=1, emb_dim=16,
                           num_heads=2, mlp_dim=32))))


def tokenizer_file(path, specials=(), words=()):
  """A word-level tokenizer.json of SPECIALS + WORDS, then `specials` and `words`."""
  from tokenizers import Tokenizer, models, pre_tokenizers
  vocab = {t: i for i, t in enumerate(SPECIALS + WORDS + list(specials) + list(words))}
  tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  tok.add_special_tokens(SPECIALS + list(specials))
  tok.save(str(path))
  return str(path)


_EXPORTED = {}


def exported(tmp_path_factory):
  """{cfg, model, boxed, params, out, written, tok_path, tmp}: built on the
  first call of the process, shared by every test module after it."""
  if not _EXPORTED:
    tmp = tmp_path_factory.mktemp("export")
    cfg = model_cfg()
    model = metalm.build_model(cfg)
    boxed = metalm.init_variables(model, jax.random.key(3))["params"]
    params = jax.tree.map(np.asarray, nn.meta.unbox(boxed))
    tok_path = tokenizer_file(tmp / "tokenizer.json")
    out = str(tmp / "export")
    written = export.export_model(cfg, params, out, seq_len=SEQ_LEN, tokenizer=tok_path,
                                  image_mean=MEAN, image_std=STD)
    _EXPORTED.update(cfg=cfg, model=model, boxed=boxed, params=params, out=out,
                     written=written, tok_path=tok_path, tmp=tmp)
  return _EXPORTED


def write_workdir(setup, workdir):
  """A training workdir holding the exported params at step 7 (the latest)
  and other params at step 3, with the run config naming the tokenizer and
  the normalisation constants. Idempotent."""
  import optax
  import orbax.checkpoint as ocp
  if os.path.exists(workdir):
    return workdir
  os.makedirs(workdir)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    json.dump({"model": setup["cfg"].to_dict(),
               "data": {"tokenizer": setup["tok_path"], "image_mean": list(MEAN),
                        "image_std": list(STD)}}, f)
  mgr = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"),
                              item_names=("state", "data_iter"))
  for step in (3, 7):
    params = setup["boxed"] if step == 7 else jax.tree.map(lambda x: x + 1.0, setup["boxed"])
    state = {"params": params, "step": np.int32(step),
             "opt_state": optax.adamw(1e-3).init(setup["params"])}
    mgr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                           data_iter=ocp.args.JsonSave({"pos": step})))
  mgr.wait_until_finished()
  mgr.close()
  return workdir


def greedy_full_forward(model, params, batch, n, eos):
  """Reference: greedy by full forward passes (no KV cache). The prompt is
  followed by n padding slots (segment 0, invisible to real queries) that are
  filled one by one, so one compiled shape serves every step."""
  b = {k: np.asarray(v) for k, v in batch.items() if k != "encoders"}
  rows, length = b["tokens"].shape
  grow = lambda v, fill=0: np.concatenate([v, np.full((rows, n), fill, v.dtype)], 1)
  b = {k: grow(v) for k, v in b.items()}
  apply = jax.jit(model.apply)
  out = [[] for _ in range(rows)]
  done = np.zeros(rows, bool)
  for i in range(n):
    t = length + i - 1  # last filled position
    logits = np.asarray(apply({"params": params}, dict(b, encoders=batch["encoders"])))[:, t]
    nxt = logits.argmax(-1).astype(np.int32)
    for r in range(rows):
      done[r] |= nxt[r] == eos
      if not done[r]:
        out[r].append(int(nxt[r]))
    b["tokens"][:, t + 1] = nxt
    b["segment_ids"][:, t + 1] = 1
    b["positions"][:, t + 1] = b["positions"][:, t] + 1
  return out
