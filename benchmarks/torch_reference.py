"""The `bench` train step in PyTorch/HF: the opponent of benchmarks/train_step.py.

Same architecture, batch and optimizer as our `bench` preset:
  decoder   HF GPT2Model (config from metalm_jax.convert.hf_gpt2.gpt2_config of
            the decoder section: pre-LN, learned positions, tied embedding)
  vision    HF CLIPVisionModel (patch conv without bias, class token,
            pre_layrnorm, quick_gelu) + post_layernorm on every token
  connector nn.Linear(vision width -> decoder width)
  docking   inputs_embeds = where(dock_mask, connector_out[dock_index], wte(tokens)),
            then GPT-2 adds its position embeddings (as our decoder does)
  loss      token-weighted cross-entropy with the batch's loss_mask
  optimizer clip by global norm, AdamW (no decay on biases and norm scales),
            warm-up + cosine schedule; float32; dropout off (as in `bench`).

Attention gets the batch's padding mask (segment_ids != 0); HF GPT-2 has no
packed-segment mask, so with more than one segment per row it would attend
across segments (the synthetic benchmark batch has one segment per row).
"""
from __future__ import annotations

import math
import re
from typing import Any, Dict, Mapping

import numpy as np


def _clip_config(enc):
  from transformers import CLIPVisionConfig
  from metalm_jax.convert import hf_common as hc
  if enc.type != "vit" or not enc.class_token or enc.patch_bias or enc.norm != "pre":
    raise ValueError(f"encoder of type {enc.type!r} (class_token={enc.class_token}, "
                     f"patch_bias={enc.patch_bias}, norm={enc.norm}) has no CLIP equivalent")
  return CLIPVisionConfig(
      hidden_size=enc.emb_dim, intermediate_size=enc.mlp_dim, num_hidden_layers=enc.num_layers,
      num_attention_heads=enc.num_heads, image_size=enc.image_size, patch_size=enc.patch_size,
      hidden_act=hc.OUR_TO_HF_ACTIVATION[enc.activation], layer_norm_eps=enc.ln_eps,
      attention_dropout=0.0, num_channels=3)


def build_model(model_cfg):
  """torch.nn.Module for a `model` config with one ViT encoder and a linear connector."""
  import torch
  from transformers import CLIPVisionModel, GPT2Config, GPT2Model
  from metalm_jax.convert import hf_gpt2

  names = sorted(model_cfg.encoders)
  if len(names) != 1 or model_cfg.encoders[names[0]].type != "vit":
    raise ValueError(f"model.encoders={names}: the torch reference has exactly one ViT encoder")
  enc = model_cfg.encoders[names[0]]
  if enc.connector.type != "linear":
    raise ValueError(f"model.encoders.{names[0]}.connector.type={enc.connector.type!r}: "
                     "the torch reference has a linear connector")
  if enc.max_items != 1:
    raise ValueError(f"model.encoders.{names[0]}.max_items={enc.max_items}: expected 1")
  dec = model_cfg.decoder
  if not dec.tie_embeddings:
    raise ValueError("model.decoder.tie_embeddings=False: the torch reference ties them")

  class Reference(torch.nn.Module):

    def __init__(self):
      super().__init__()
      gcfg = GPT2Config(**{k: v for k, v in hf_gpt2.gpt2_config(dec).items()
                           if k not in ("architectures", "model_type")})
      gcfg._attn_implementation = "sdpa"
      self.decoder = GPT2Model(gcfg)
      vcfg = _clip_config(enc)
      vcfg._attn_implementation = "sdpa"
      clip = CLIPVisionModel(vcfg)
      self.vision = getattr(clip, "vision_model", clip)  # transformers 5 has no wrapper
      self.connector = torch.nn.Linear(enc.emb_dim, dec.emb_dim)
      self.encoder_name = names[0]

    def embeds(self, batch):
      """The decoder's inputs [B, L, emb]: token embeddings with the
      connector's image tokens docked."""
      h = self.vision(pixel_values=batch["pixels"]).last_hidden_state
      h = self.connector(self.vision.post_layernorm(h))            # [B, T, emb]
      emb = self.decoder.wte(batch["tokens"])
      idx = batch["dock_index"].unsqueeze(-1).expand(-1, -1, emb.shape[-1])
      return torch.where(batch["dock_mask"].unsqueeze(-1), torch.gather(h, 1, idx), emb)

    def forward(self, batch):
      """Logits [B, L, vocab]."""
      x = self.embeds(batch)
      out = self.decoder(inputs_embeds=x, position_ids=batch["positions"],
                         attention_mask=batch["attention_mask"]).last_hidden_state
      return out @ self.decoder.wte.weight.T

  return Reference()


def our_params(model, model_cfg) -> Dict[str, Any]:
  """The reference's weights as our MetaLM's 'params' tree (numpy), through
  the HF importers (metalm_jax/convert): the same model on both sides."""
  from metalm_jax.convert import hf_clip, hf_gpt2
  from metalm_jax.convert.hf_io import WeightReader
  name = model.encoder_name
  sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
  return {
      "decoder": hf_gpt2.Gpt2.params(WeightReader(sd, "decoder."), model_cfg.decoder),
      f"encoders_{name}": hf_clip.ClipVision.params(WeightReader(sd, "vision."),
                                                    model_cfg.encoders[name], None),
      f"connectors_{name}": {"proj": {"kernel": sd["connector.weight"].T,
                                      "bias": sd["connector.bias"]}},
  }


def lm_head_model(model):
  """An HF GPT2LMHeadModel sharing the reference's decoder (its output
  projection tied to the token embedding), for `generate`."""
  from transformers import GPT2LMHeadModel
  lm = GPT2LMHeadModel(model.decoder.config)
  lm.transformer = model.decoder
  lm.lm_head.weight = model.decoder.wte.weight
  return lm.eval()


def hf_greedy(model, lm, batch, new_tokens: int):
  """HF `generate` on the docked prompt: greedy, no eos, `new_tokens` ids
  per row (int64 [B, new_tokens]). `batch` is a `to_torch_batch` of a
  left-padded prompt; the image is docked into `inputs_embeds` (the vision
  tower runs once, in here); HF takes the positions from the attention
  mask, as our prompts number them (from each row's first real token)."""
  import torch
  from transformers import GenerationConfig
  gen = GenerationConfig(max_new_tokens=new_tokens, do_sample=False, num_beams=1,
                         eos_token_id=None, pad_token_id=0, bos_token_id=None)
  with torch.inference_mode():
    out = lm.generate(inputs_embeds=model.embeds(batch), attention_mask=batch["attention_mask"],
                      generation_config=gen)
  return out[:, -new_tokens:]


def to_torch_batch(batch: Mapping[str, Any], model_cfg) -> Dict[str, Any]:
  """Our numpy batch contract -> torch tensors (pixels NHWC -> NCHW, one item)."""
  import torch
  name = sorted(model_cfg.encoders)[0]
  pixels = np.asarray(batch["encoders"][name]["pixels"])[:, 0]          # [B, H, W, 3]
  as_long = lambda k: torch.from_numpy(np.asarray(batch[k]).astype(np.int64))
  return {
      "pixels": torch.from_numpy(np.ascontiguousarray(pixels.transpose(0, 3, 1, 2))),
      "tokens": as_long("tokens"), "targets": as_long("targets"),
      "positions": as_long("positions"), "dock_index": as_long("dock_index"),
      "dock_mask": torch.from_numpy(np.asarray(batch["dock_mask"])),
      "attention_mask": torch.from_numpy((np.asarray(batch["segment_ids"]) != 0).astype(np.int64)),
      "loss_mask": torch.from_numpy(np.asarray(batch["loss_mask"], np.float32)),
  }


def make_optimizer(model, opt_cfg, total_steps: int):
  """AdamW with the config's betas/eps/decay (no decay on rank < 2 params, i.e.
  biases and norm scales, as `optimizer.no_decay_regex` does for ours), its
  warm-up + cosine/linear schedule. `fused` AdamW: the fastest CPU variant."""
  import torch
  decay = [p for p in model.parameters() if p.ndim >= 2]
  no_decay = [p for p in model.parameters() if p.ndim < 2]
  opt = torch.optim.AdamW(
      [{"params": decay, "weight_decay": opt_cfg.weight_decay},
       {"params": no_decay, "weight_decay": 0.0}],
      lr=opt_cfg.lr, betas=(opt_cfg.b1, opt_cfg.b2), eps=opt_cfg.eps, fused=True)
  warm, end = opt_cfg.warmup_steps, opt_cfg.end_lr_frac

  def factor(step):
    w = min(1.0, (step + 1) / max(warm, 1)) if warm else 1.0
    frac = min(max((step - warm) / max(total_steps - warm, 1), 0.0), 1.0)
    shape = 0.5 * (1 + math.cos(math.pi * frac)) if opt_cfg.decay == "cosine" else 1.0 - frac
    return w * (end + (1 - end) * shape)
  return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


def make_train_step(model, opt, sched, clip_norm: float):
  """batch -> loss (a float tensor); one optimizer step."""
  import torch
  import torch.nn.functional as F

  def step(batch):
    opt.zero_grad(set_to_none=True)
    logits = model(batch)
    ce = F.cross_entropy(logits.flatten(0, 1), batch["targets"].flatten(), reduction="none")
    w = batch["loss_mask"].flatten()
    loss = (ce * w).sum() / w.sum().clamp_min(1.0)
    loss.backward()
    if clip_norm:
      torch.nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
    opt.step()
    sched.step()
    return loss.detach()
  return step


def count_params(model) -> int:
  """Distinct parameters (the tied embedding once)."""
  return sum(p.numel() for p in model.parameters())


def formula_flops_per_example(model, model_cfg, seq_len: int) -> float:
  """Our FLOPs formula (metalm_jax/train/metrics.py) applied to the torch
  modules: 2 * |W| * tokens * 3 per matmul weight (Linear, GPT-2 Conv1D, patch
  conv, tied output embedding) + 4 * context * width * tokens * 3 per attention."""
  from metalm_jax import batch as batch_lib
  enc = model_cfg.encoders[model.encoder_name]
  t_enc = batch_lib.slot_length(enc)
  total = 0.0
  for part, tokens, ctx in ((model.decoder, seq_len, seq_len), (model.vision, t_enc, t_enc),
                            (model.connector, t_enc, t_enc)):
    for name, p in part.named_parameters():
      matmul = p.ndim >= 2 and not re.search(r"(wte|wpe|position_embedding)\.weight$", name)
      if matmul:  # Linear / Conv1D kernels and the patch conv
        total += 2.0 * p.numel() * tokens * 3
    n_attn = sum(1 for n, _ in part.named_modules() if n.split(".")[-1] in ("attn", "self_attn"))
    width = model_cfg.decoder.emb_dim if part is model.decoder else enc.emb_dim
    total += n_attn * 4.0 * ctx * width * tokens * 3
  total += 2.0 * model.decoder.wte.weight.numel() * seq_len * 3  # tied output projection
  return total


def counted_flops_per_step(step, batch) -> float:
  """FLOPs torch itself counts for one train step (torch.utils.flop_counter:
  matmuls, convolutions, attention; forward and backward)."""
  from torch.utils.flop_counter import FlopCounterMode
  counter = FlopCounterMode(display=False)
  with counter:
    step(batch)
  return float(counter.get_total_flops())


def measure_matmul_peak(size: int = 1024, seconds: float = 1.0) -> float:
  """Best FLOP/s of torch's float32 square matmul."""
  import time
  import torch
  a, b = torch.randn(size, size), torch.randn(size, size)
  a @ b
  best, start = float("inf"), time.perf_counter()
  while time.perf_counter() - start < seconds:
    t0 = time.perf_counter()
    a @ b
    best = min(best, time.perf_counter() - t0)
  return 2.0 * size ** 3 / best


class TorchBench:
  """Builds the reference for a train config and one fixed batch; `step()`
  runs one train step and returns the loss."""

  def __init__(self, config, np_batch, threads: int = 2, seed: int = 0):
    import torch
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    self.model = build_model(config.model).train()
    self.opt, self.sched = make_optimizer(self.model, config.optimizer, config.total_steps)
    self.batch = to_torch_batch(np_batch, config.model)
    self._step = make_train_step(self.model, self.opt, self.sched, config.optimizer.clip_norm)

  def step(self) -> float:
    return float(self._step(self.batch))

  def counted_flops(self) -> float:
    return counted_flops_per_step(self._step, self.batch)
