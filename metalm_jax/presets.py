"""Library presets: model components and sizes, data presets, logical axis rules.

The experiment files in configs/ (the user's) build their ConfigDicts from
these; the library never imports configs/. Every field can still be
overridden on the command line (`--config.model.decoder.num_layers=6`).

    model_config("tiny" | "bench" | "paper_vl" | "paper_lang" | "modern_vl" | "modern_tiny")
    gpt_baseline(model_cfg), gpt_baseline_data(data_cfg)   the same-size GPT
    data_config("vl" | "lang", size)   same size names (the data preset)
    logical_rules()                    logical axis -> mesh axes
    decoder / vit / bert / whisper / video / connector / stack_options: one component each
    (each modality's record, models/modalities/, names its encoder builder)
"""
from __future__ import annotations

import dataclasses
import os

import ml_collections as mlc

from metalm_jax.media.images import CLIP_MEAN, CLIP_STD
from metalm_jax.registry import Registry

ConfigDict = mlc.ConfigDict


# ---- model components ----------------------------------------------------------
def stack_options(scan_layers=False, remat_policy="none", attention_impl="auto"):
  """Compute options every layer stack (decoder, each encoder) takes:
  scan_layers (nn.scan over the blocks, params stacked on a leading `layers`
  axis), remat_policy (metalm_jax/models/remat.py: none, full, dots_saveable,
  dots_with_no_batch_dims_saveable, save_qkv_proj, ...), attention_impl
  (auto | xla | cudnn; auto = cuDNN flash attention on GPU in bf16/fp16)."""
  return dict(scan_layers=scan_layers, remat_policy=remat_policy, attention_impl=attention_impl)


def decoder(**kw) -> ConfigDict:
  """The interface decoder; the defaults are GPT-2-shaped. Family fields
  (the decoder families below build Llama / Qwen2 / Gemma from them):
  norm_type (layer | rms | rms_plus_one; `ln_eps` is its epsilon), mlp (dense
  | gated: act(x W_gate) * x W_up, so SwiGLU = gated + silu, GeGLU = gated +
  gelu_tanh), num_kv_heads (grouped-query attention, 0 = num_heads), qkv_bias
  (q/k/v biases even with use_bias=False), rope_theta and rope_scaling
  ({} or {"rope_type": "llama3", factor, low_freq_factor, high_freq_factor,
  original_max_position_embeddings}; positions="rotary" only), embed_scale
  (token embeddings times this, e.g. Gemma's sqrt(emb_dim)).

  loss_chunk: 0 = the loss (train and eval) takes the full float32 logits
  [B, L, vocab]; N > 0 = it takes the final hidden states and computes the
  logits N positions at a time, never all of them (models/chunked_loss.py).
  The same loss and gradients; it changes memory and speed, not the model.

  lora: low-rank adapters (metalm_jax/models/lora.py), off unless `enabled`:
  rank, alpha (scale alpha / rank), targets (projection names: query, key,
  value, out; wi, wo for the dense MLP; wi_gate, wi_up, wo for the gated one),
  dropout on the adapter input, init of A ("peft" | "gaussian"; B starts at
  zero), freeze ("decoder": the decoder's base weights are frozen, "all":
  every non-adapter param; explicit optimizer groups still decide for their
  own params). `lora` in kw updates these fields (a dict of some of them)."""
  lora = dict(enabled=False, rank=8, alpha=16.0, targets=["query", "key", "value", "out"],
              dropout=0.0, init="peft", freeze="decoder")
  lora.update(kw.pop("lora", None) or {})
  d = dict(vocab_size=1024, num_layers=2, emb_dim=64, num_heads=4, head_dim=0, mlp_dim=256,
           activation="gelu", norm="pre", positions="learned", max_len=256, dropout=0.0,
           use_bias=True, ln_eps=1e-5, tie_embeddings=True, norm_type="layer", mlp="dense",
           num_kv_heads=0, qkv_bias=False, rope_theta=10000.0, rope_scaling={},
           embed_scale=1.0, loss_chunk=0, lora=lora, **stack_options())
  d.update(kw)
  return ConfigDict(d)


def connector(type_="mlp", **kw) -> ConfigDict:
  d = dict(type=type_, num_layers=3 if type_ == "mlp" else 1, hidden_dim=0, activation="gelu")
  d.update(kw)
  return ConfigDict(d)


def vit(**kw) -> ConfigDict:
  """CLIP-shaped ViT (pre-LN, quick_gelu, class token, no patch bias).
  readout: "tokens" docks every token, "map" SigLIP's attention-pooling head
  (one vector; models/vision.py)."""
  d = dict(type="vit", max_items=1, image_size=64, patch_size=16, num_layers=2, emb_dim=64,
           num_heads=4, head_dim=0, mlp_dim=256, activation="quick_gelu", norm="pre",
           ln_eps=1e-5, class_token=True, pre_norm=True, final_norm=True, patch_bias=False,
           readout="tokens", dropout=0.0, use_bias=True, connector=connector("mlp"),
           **stack_options())
  d.update(kw)
  return ConfigDict(d)


def bert(**kw) -> ConfigDict:
  """BERT/RoBERTa-shaped bidirectional encoder (post-LN, learned positions)."""
  d = dict(type="bert", max_items=2, max_len=16, vocab_size=1024, num_layers=2, emb_dim=64,
           num_heads=4, head_dim=0, mlp_dim=256, activation="gelu", norm="post", ln_eps=1e-12,
           max_positions=512, type_vocab_size=2, dropout=0.0, use_bias=True,
           connector=connector("linear"), **stack_options())
  d.update(kw)
  return ConfigDict(d)


def whisper(**kw) -> ConfigDict:
  """Whisper-shaped audio encoder (metalm_jax/models/audio.py): log-mel frontend
  (sample_rate, n_fft, hop_length, num_mel_bins: Whisper's 16 kHz / 400 / 160
  / 80), clips of max_seconds, two convs, sinusoidal positions (max_positions
  rows, 0 = the clip's ceil(frames / 2)), pre-LN layers, final LayerNorm, then
  `pool` ("avg" | "stride") to num_vectors docked vectors per clip."""
  d = dict(type="whisper", max_items=1, sample_rate=16000, max_seconds=1.0, n_fft=400,
           hop_length=160, num_mel_bins=80, max_positions=0, num_vectors=8, pool="avg",
           num_layers=2, emb_dim=64, num_heads=4, head_dim=0, mlp_dim=256, activation="gelu",
           norm="pre", ln_eps=1e-5, dropout=0.0, use_bias=True, connector=connector("mlp"),
           **stack_options())
  d.update(kw)
  return ConfigDict(d)


def video(**kw) -> ConfigDict:
  """Video encoder (metalm_jax/models/video.py): the ViT of `vit` on every
  frame (its fields, CLIP-shaped), learned temporal positions, `temporal_layers`
  across frames (heads / MLP 0 = the ViT's), `pool` "frames" (one vector per
  frame) or "tokens" (every ViT token, meaned over frames), then `num_vectors`
  per clip (adaptive average pooling)."""
  d = vit(max_items=1, image_size=32, patch_size=16).to_dict()
  d.update(type="video", frames=4, temporal_layers=1, temporal_heads=0, temporal_mlp_dim=0,
           pool="frames", num_vectors=4)
  d.update(kw)
  return ConfigDict(d)




# ---- decoder families -------------------------------------------------------------
# Decoder families: the `model.decoder` fields that make a GPT-2, Llama,
# Qwen2 or Gemma shaped interface decoder.
#
#     decoder_family("llama", num_layers=16, emb_dim=2048, ...)  -> ConfigDict
#
# Each family is presets.decoder() (tiny sizes) with the family's fields set;
# keyword arguments override any field. What each family is, as HF defines it:
#
# - gpt2: LayerNorm, learned positions, GELU (tanh) MLP, biases, tied head.
# - llama: RMSNorm (weight * normed), rotary positions (rope_theta, optional
#   Llama-3 rope_scaling), SwiGLU MLP, grouped-query attention (num_kv_heads),
#   no biases, untied head.
# - qwen2: Llama plus q/k/v biases (qkv_bias); head tied or not.
# - gemma: RMSNorm with (1 + weight), GeGLU with tanh-approximated GELU,
#   token embeddings times sqrt(emb_dim) (embed_scale), tied head, head_dim
#   independent of emb_dim / num_heads.
#
# HF import / export of these: metalm_jax/convert/hf_llama_like.py.
FAMILIES = Registry("decoder family")


@FAMILIES.register("gpt2")
def gpt2(**kw):
  return decoder(**{"activation": "gelu_new", **kw})


def _llama_fields(**kw):
  fields = dict(norm_type="rms", mlp="gated", activation="silu", positions="rotary",
                use_bias=False, qkv_bias=False, tie_embeddings=False, ln_eps=1e-5,
                rope_theta=500000.0, num_kv_heads=2)
  fields.update(kw)
  return fields


@FAMILIES.register("llama")
def llama(**kw):
  return decoder(**_llama_fields(**kw))


@FAMILIES.register("qwen2")
def qwen2(**kw):
  return decoder(**_llama_fields(**{"qkv_bias": True, "ln_eps": 1e-6,
                                            "rope_theta": 1000000.0, **kw}))


@FAMILIES.register("gemma")
def gemma(**kw):
  """Tiny default: 4 query heads of head_dim 32 over emb_dim 64, one kv head
  (Gemma-2B is multi-query). embed_scale follows the final emb_dim unless given."""
  fields = dict(norm_type="rms_plus_one", mlp="gated", activation="gelu_tanh",
                positions="rotary", use_bias=False, qkv_bias=False, tie_embeddings=True,
                ln_eps=1e-6, rope_theta=10000.0, num_kv_heads=1, head_dim=32)
  fields.update(kw)
  emb_dim = fields.get("emb_dim", decoder().emb_dim)
  fields.setdefault("embed_scale", float(emb_dim) ** 0.5)
  return decoder(**fields)


def decoder_family(name: str, **kw):
  """The `model.decoder` section of family `name` (FAMILIES), fields overridden by kw."""
  return FAMILIES.get(name)(**kw)


# ---- model sizes ----------------------------------------------------------------
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
  """Paper language-only: decoder 24x2048, 32 heads, vocab 64k (~1.3B), DeepNorm
  (the paper's; alpha = (2N)^(1/4), beta = (8N)^(-1/4) for N = 24 decoder
  layers, models/stack.py); language encoder 24x1024, 16 heads (~366M);
  linear connector. Layers scanned; the decoder rematerialised ('full')."""
  return ConfigDict(dict(
      dtype="bfloat16",
      decoder=decoder(vocab_size=64000, num_layers=24, emb_dim=2048, num_heads=32, mlp_dim=8192,
                      max_len=2048, positions="sinusoidal", norm="deepnorm",
                      **stack_options(scan_layers=True, remat_policy="full")),
      encoders=dict(text=bert(vocab_size=64000, max_items=8, max_len=128, num_layers=24,
                              emb_dim=1024, num_heads=16, mlp_dim=4096, max_positions=512,
                              norm="post", connector=connector("linear"),
                              **stack_options(scan_layers=True)))))


def siglip(**kw) -> ConfigDict:
  """A SigLIP-shaped ViT (vit fields): patch conv with bias, no class token,
  no pre-LayerNorm, tanh-GELU, post-LayerNorm on every token, eps 1e-6.
  Tiny sizes by default; SigLIP-B/16 is image_size 224, patch 16, 12 x 768,
  12 heads, MLP 3072."""
  return vit(**{**dict(class_token=False, pre_norm=False, final_norm=True, patch_bias=True,
                       activation="gelu_tanh", ln_eps=1e-6), **kw})


# Llama-3.2-1B's decoder (HF config of meta-llama/Llama-3.2-1B): 16 x 2048,
# 32 heads of 64 (8 kv heads), SwiGLU 8192, vocab 128256, rope_theta 5e5 with
# Llama-3 scaling (factor 32, low / high frequency factors 1 / 4, 8192
# original positions), tied head.
LLAMA_3_2_1B = dict(vocab_size=128256, num_layers=16, emb_dim=2048, num_heads=32, num_kv_heads=8,
                    head_dim=64, mlp_dim=8192, tie_embeddings=True, rope_theta=500000.0,
                    rope_scaling=dict(rope_type="llama3", factor=32.0, low_freq_factor=1.0,
                                      high_freq_factor=4.0,
                                      original_max_position_embeddings=8192))


def _modern_vl():
  """Today's foundation models docked: a Llama-3.2-1B-shaped decoder and a
  SigLIP-B/16-shaped ViT at 224 px with the 3-layer MLP connector (the
  pairing MaxText / Levanter use for VLMs). Layers scanned; the decoder
  rematerialised ('full'). Import real weights into it with
  `python -m metalm_jax.convert import-hf` (docs/weights-and-serving.md)."""
  return ConfigDict(dict(
      dtype="bfloat16",
      decoder=llama(**LLAMA_3_2_1B, max_len=4096,
                    **stack_options(scan_layers=True, remat_policy="full")),
      encoders=dict(vision=siglip(image_size=224, patch_size=16, num_layers=12, emb_dim=768,
                                  num_heads=12, mlp_dim=3072, connector=connector("mlp"),
                                  **stack_options(scan_layers=True)))))


def _modern_tiny():
  """modern_vl's shapes at tiny sizes (CPU): a Llama-shaped decoder (2 x 64,
  4 heads, 2 kv heads) and a SigLIP-shaped ViT at 64 px, with the tiny
  preset's text encoder."""
  return ConfigDict(dict(
      dtype="float32",
      decoder=llama(tie_embeddings=True),
      encoders=dict(vision=siglip(), text=bert(max_items=2, max_len=16))))


MODEL_SIZES = {"tiny": _tiny, "bench": _bench, "paper_vl": _paper_vl, "paper_lang": _paper_lang,
               "modern_vl": _modern_vl, "modern_tiny": _modern_tiny}


def model_config(size: str) -> ConfigDict:
  if size not in MODEL_SIZES:
    raise ValueError(f"size={size!r} is unknown; known: {sorted(MODEL_SIZES)}")
  return MODEL_SIZES[size]()


def gpt_baseline(model_cfg) -> ConfigDict:
  """The same-size decoder-only GPT of a MetaLM model config: the same `decoder`
  section (sizes, vocabulary, norm, positions, compute options) and `dtype`,
  and no encoders (so no connectors): its params are exactly MetaLM's
  `decoder/...` params. The baseline the paper compares MetaLM with."""
  out = ConfigDict(model_cfg.to_dict())
  out.encoders = {}
  return out


def gpt_baseline_data(data_cfg) -> ConfigDict:
  """A data config whose rows are plain causal LM text: the same token stream
  as `data_cfg` (packing does not depend on spans) with semi-causal spans off
  (`spans.encoder` empty, no caption prefix), so nothing is docked and every
  next token is trained. Mixture sources that need an encoder (images) stop
  the pipeline with an error naming the task."""
  out = ConfigDict(data_cfg.to_dict())
  out.spans.encoder = ""
  out.spans.prefix_max = 0
  return out


# ---- logical axis rules ---------------------------------------------------------
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
      # Grouped-query attention's key/value heads (fewer than `heads`, often
      # fewer than the tensor axis): replicated, as their weights are small.
      ("kv_heads", None), ("act_kv_heads", None),
      ("lora_rank", None),  # LoRA adapters: sharded like their base kernel but the rank
  ]


# ---- data -----------------------------------------------------------------------
DATA_KINDS = ("vl", "lang", "av")
# The real-data builders that read official files (metalm_jax/data/builders):
# each has a manual_dirs entry ("" = not given), so the documented override
# --config.data.manual_dirs.metalm_coco_karpathy=DIR works on the locked config.
MANUAL_DATASETS = ("metalm_coco_karpathy", "metalm_vqav2", "metalm_text_corpus",
                   "metalm_audio_captions", "metalm_msrvtt")


@dataclasses.dataclass(frozen=True)
class DataPreset:
  """What a data size changes: the embedded world, row lengths, span sampling."""
  world: str            # embedded world builder config: "tiny" (64 px) or "paper" (224 px)
  vl_seq_len: int       # decoder row length of kind "vl"
  lang_seq_len: int     # decoder row length of kind "lang"
  span_encoder: str     # text encoder for language spans ("" = none)
  span_min: int         # shortest / longest language span
  span_max: int
  prefix_max: int       # longest caption prefix sent to the text encoder
  # Images a VL row holds (the vision encoder's max_items in VL pretraining,
  # configs/common.py); > 1 puts interleaved documents in the VL mixture.
  vl_images: int = 1


DATA_SIZES = {
    # vl_seq_len 128: an interleaved row holds 3-4 images of 19 positions with
    # their prompts and answers (64 held one).
    "tiny": DataPreset(world="tiny", vl_seq_len=128, lang_seq_len=128, span_encoder="text",
                       span_min=8, span_max=16, prefix_max=8, vl_images=4),
    "bench": DataPreset(world="tiny", vl_seq_len=128, lang_seq_len=128, span_encoder="",
                        span_min=8, span_max=16, prefix_max=0),
    "paper_vl": DataPreset(world="paper", vl_seq_len=256, lang_seq_len=1024, span_encoder="",
                           span_min=64, span_max=128, prefix_max=0),
    "paper_lang": DataPreset(world="paper", vl_seq_len=256, lang_seq_len=2048,
                             span_encoder="text", span_min=64, span_max=128, prefix_max=0),
}


def default_data_dir() -> str:
  return os.environ.get("METALM_DATA_DIR", os.path.join("~", ".cache", "metalm_jax", "tfds"))


def vl_mixture(p: DataPreset) -> dict:
  """The VL pretraining mixture (README, Data): image-text pairs and text-only
  documents as in the paper, plus interleaved documents (several images with
  their captions or Q&A laid out as in-context prompts; where a row holds more
  than one image) and instruction-phrased text. Interleaved documents and
  instruction text carry VQA question / answer pairs and caption prompts, so
  a model pretrained on this mixture has seen the VQA and captioning formats:
  the zero-shot claims (configs/experiments/claims.py) pretrain on
  `ZERO_SHOT_VL_MIXTURE` instead. Finetune configs add "world_vqa"."""
  if p.vl_images > 1:
    return {"world_caption": 0.45, "world_interleaved": 0.25, "world_text": 0.2,
            "world_instructions": 0.1}
  return {"world_caption": 0.6, "world_text": 0.3, "world_instructions": 0.1}


def av_mixture(p: DataPreset) -> dict:
  """The four-modality pretraining mixture (kind "av"; README, Sound and
  motion in the embedded world): the VL mixture's rows at 0.7 of the total,
  then the world's sound-clip and video captions at 0.15 each, laid out like
  image captions (`<audio>` / `<video>` brackets, no prompt). Their questions
  stay for finetuning and zero-shot evaluation, as VQA does for images."""
  out = {k: round(0.7 * w, 4) for k, w in vl_mixture(p).items()}
  out.update(world_audio_caption=0.15, world_video_caption=0.15)
  return out


def data_config(kind: str, size: str) -> ConfigDict:
  """config.data for kind "vl" (image-text pairs + text), "lang" (text) or
  "av" (the VL mixture plus sound-clip and video captions; `av_mixture`).

  Fields:
    data_dir        where TFDS data sets live; the embedded world and its
                    tokenizer are prepared there on first use
                    (env METALM_DATA_DIR, else ~/.cache/metalm_jax/tfds)
    world           embedded world builder config: "tiny" (64 px) or "paper" (224 px)
    manual_dirs     {tfds name: folder of official files} for real data builders
                    (metalm_coco_karpathy, metalm_vqav2, metalm_text_corpus,
                    metalm_audio_captions, metalm_msrvtt)
    mixture         {source name: weight}; sources in metalm_jax/data/sources.py
    seq_len         decoder row length
    tokenizer       SentencePiece model path; "" = the embedded one
    skip_corrupt_records   False: an unreadable record stops the run, naming the
                    data set, split, shard file and record; True: skipped and
                    counted (data/skipped_unreadable_record)
    num_workers     Grain worker processes; 0 = in-process
    read_threads / prefetch_buffer   per mixture entry: threads running the
                    per-example map and rows read ahead (memory: rows x row size)
    max_doc_tokens  documents are truncated beyond this (counted)
    spans           encoder: text encoder for language spans ("" = none);
                    min_len / max_len / ratio of language spans;
                    prefix_max: longest caption prefix sent to the text encoder;
                    episode_docked: chance that a text binding episode item's
                    phrase goes through the text encoder in a pretraining row
                    (else plain tokens; evaluation always docks it)
    caption_contexts  short texts one of which (or none: "" in the list, or
                    an empty list) is drawn per caption pretraining row and
                    put between the image and its caption as plain tokens,
                    like the words around an image on a web page
    image_mean / image_std   normalisation (CLIP)
  """
  if kind not in DATA_KINDS:
    raise ValueError(f"kind={kind!r} is unknown; known: {DATA_KINDS}")
  if size not in DATA_SIZES:
    raise ValueError(f"size={size!r} is unknown; known: {sorted(DATA_SIZES)}")
  p = DATA_SIZES[size]
  seq_len = p.lang_seq_len if kind == "lang" else p.vl_seq_len
  mixture = {"vl": vl_mixture, "av": av_mixture}.get(kind, lambda p: {"world_text": 1.0})(p)
  return ConfigDict(dict(
      data_dir=default_data_dir(),
      world=p.world,
      manual_dirs={name: "" for name in MANUAL_DATASETS},
      mixture=mixture,
      seq_len=seq_len,
      tokenizer="",
      skip_corrupt_records=False,
      num_workers=0,
      read_threads=2,
      prefetch_buffer=32,
      max_doc_tokens=8 * seq_len,
      spans=dict(encoder=p.span_encoder, min_len=p.span_min, max_len=p.span_max, ratio=0.25,
                 prefix_max=p.prefix_max, episode_docked=1.0),
      caption_contexts=[],
      image_mean=CLIP_MEAN,
      image_std=CLIP_STD,
  ))
