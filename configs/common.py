"""Shared config pieces: model size presets and the `arg` string parser.

`get_config("size=tiny,runlocal")` in each config file calls `parse_arg` and
picks a preset from MODEL_SIZES. Every field can then be overridden on the
command line: `--config.model.decoder.num_layers=6`.
"""
from __future__ import annotations

import ml_collections as mlc

ConfigDict = mlc.ConfigDict


def parse_arg(arg, **defaults):
  """'size=tiny,runlocal' -> ConfigDict(size='tiny', runlocal=True) over defaults.

  Values are converted to the type of the default; an unknown key is an error.
  """
  out = dict(defaults)
  for item in filter(None, (arg or "").split(",")):
    key, _, value = item.partition("=")
    if key not in defaults:
      raise ValueError(f"config arg {key!r} is unknown; known: {sorted(defaults)}")
    default = defaults[key]
    if not _:
      value = True
    elif isinstance(default, bool):
      value = value.lower() in ("1", "true", "yes")
    elif default is not None:
      value = type(default)(value)
    out[key] = value
  return mlc.ConfigDict(out)


def stack_options(scan_layers=False, remat_policy="none", attention_impl="auto"):
  """Compute options every layer stack (decoder, each encoder) takes:
  scan_layers (nn.scan over the blocks, params stacked on a leading `layers`
  axis), remat_policy (metalm_jax/models/remat.py: none, full, dots_saveable,
  dots_with_no_batch_dims_saveable, save_qkv_proj, ...), attention_impl
  (auto | xla | cudnn; auto = cuDNN flash attention on GPU in bf16/fp16)."""
  return dict(scan_layers=scan_layers, remat_policy=remat_policy, attention_impl=attention_impl)


def decoder(**kw):
  d = dict(vocab_size=1024, num_layers=2, emb_dim=64, num_heads=4, head_dim=0, mlp_dim=256,
           activation="gelu", norm="pre", positions="learned", max_len=256, dropout=0.0,
           use_bias=True, ln_eps=1e-5, tie_embeddings=True, **stack_options())
  d.update(kw)
  return ConfigDict(d)


def connector(type_="mlp", **kw):
  d = dict(type=type_, num_layers=3 if type_ == "mlp" else 1, hidden_dim=0, activation="gelu")
  d.update(kw)
  return ConfigDict(d)


def vit(**kw):
  """CLIP-shaped ViT (pre-LN, quick_gelu, class token, no patch bias)."""
  d = dict(type="vit", max_items=1, image_size=64, patch_size=16, num_layers=2, emb_dim=64,
           num_heads=4, head_dim=0, mlp_dim=256, activation="quick_gelu", norm="pre",
           ln_eps=1e-5, class_token=True, pre_norm=True, final_norm=True, patch_bias=False,
           dropout=0.0, use_bias=True, connector=connector("mlp"), **stack_options())
  d.update(kw)
  return ConfigDict(d)


def bert(**kw):
  """BERT/RoBERTa-shaped bidirectional encoder (post-LN, learned positions)."""
  d = dict(type="bert", max_items=2, max_len=16, vocab_size=1024, num_layers=2, emb_dim=64,
           num_heads=4, head_dim=0, mlp_dim=256, activation="gelu", norm="post", ln_eps=1e-12,
           max_positions=512, type_vocab_size=2, dropout=0.0, use_bias=True,
           connector=connector("linear"), **stack_options())
  d.update(kw)
  return ConfigDict(d)


def _tiny():
  return ConfigDict(dict(
      dtype="float32",
      decoder=decoder(),
      encoders=dict(vision=vit(), text=bert(max_items=2, max_len=16))))


def _bench():
  """The issue-5 benchmark config: decoder 4x256/4 heads, vocab 1000; ViT 4x256
  at 64 px with 8 px patches; linear connector."""
  return ConfigDict(dict(
      dtype="float32",
      decoder=decoder(vocab_size=1000, num_layers=4, emb_dim=256, num_heads=4, mlp_dim=1024,
                      max_len=512),
      encoders=dict(vision=vit(image_size=64, patch_size=8, num_layers=4, emb_dim=256,
                               num_heads=4, mlp_dim=1024, connector=connector("linear")))))


def _paper_vl():
  """Paper VL: GPT-2-medium-sized decoder (24x1024, 16 heads, vocab ~50k),
  ViT-B/16 at 224 px, 3-layer MLP connector. Layers scanned; the decoder
  rematerialised ('full')."""
  return ConfigDict(dict(
      dtype="bfloat16",
      decoder=decoder(vocab_size=50304, num_layers=24, emb_dim=1024, num_heads=16, mlp_dim=4096,
                      max_len=2048, dropout=0.1, activation="gelu_new",
                      **stack_options(scan_layers=True, remat_policy="full")),
      encoders=dict(vision=vit(image_size=224, patch_size=16, num_layers=12, emb_dim=768,
                               num_heads=12, mlp_dim=3072, connector=connector("mlp"),
                               **stack_options(scan_layers=True)))))


def _paper_lang():
  """Paper language-only: decoder 24x2048, 32 heads, vocab 64k (~1.3B);
  language encoder 24x1024, 16 heads (~366M); linear connector. Layers
  scanned; the decoder rematerialised ('full')."""
  return ConfigDict(dict(
      dtype="bfloat16",
      decoder=decoder(vocab_size=64000, num_layers=24, emb_dim=2048, num_heads=32, mlp_dim=8192,
                      max_len=2048, positions="sinusoidal",
                      **stack_options(scan_layers=True, remat_policy="full")),
      encoders=dict(text=bert(vocab_size=64000, max_items=8, max_len=128, num_layers=24,
                              emb_dim=1024, num_heads=16, mlp_dim=4096, max_positions=512,
                              norm="post", connector=connector("linear"),
                              **stack_options(scan_layers=True)))))


def logical_rules():
  """Logical axis -> mesh axes. Params: `embed` over fsdp (ZeRO-3 style),
  heads/mlp/vocab over tensor (Megatron style). Activations use `act_*` names
  so the batch can take fsdp without clashing with param `embed`."""
  return [
      ("act_batch", ("data", "fsdp")), ("act_length", None), ("act_embed", None),
      ("act_heads", "tensor"), ("act_kv", None), ("act_mlp", "tensor"),
      ("act_vocab", "tensor"),
      ("embed", "fsdp"), ("embed_in", None), ("heads", "tensor"), ("kv", None),
      ("mlp", "tensor"), ("vocab", "tensor"), ("length", None), ("norm", None),
      ("layers", None),  # the stacked axis of scanned layers (never sharded)
  ]


MODEL_SIZES = {"tiny": _tiny, "bench": _bench, "paper_vl": _paper_vl, "paper_lang": _paper_lang}


def model_config(size: str) -> ConfigDict:
  if size not in MODEL_SIZES:
    raise ValueError(f"size={size!r} is unknown; known: {sorted(MODEL_SIZES)}")
  return MODEL_SIZES[size]()
