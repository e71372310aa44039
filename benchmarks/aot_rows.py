"""The AOT fit table's rows and how one compile report becomes a row of it.
Pure Python (no jax): benchmarks/aot_fit_table.py compiles the rows,
benchmarks/perf_tables.py renders docs/aot-fit.md's table from the committed
reports (`benchmarks/results/` + report_name)."""
from __future__ import annotations


def report_name(model: str, topology: str) -> str:
  """The committed report of a row, in benchmarks/results/."""
  return f"aot_{model}_{topology}.json"


# (model, config, topology, overrides). Meshes: FSDP over every chip
# (mesh.fsdp=-1 in the paper configs). paper_lang keeps the paper's batch of
# 1024 x 2048 tokens through gradient accumulation.
# paper_lang on TPU: splash attention in the decoder and the language encoder
# (what `auto` picks on a TPU; this CPU host must name it) and the loss in
# chunks of 256 positions (no float32 [B, L, 64000] logits): 16 micro-batches
# fit a v5e (11.41 GiB per chip; 64 were needed with XLA attention and full
# logits, which at 16 took 20.27 GiB).
_LANG_TPU = ["--config.model.decoder.attention_impl=splash",
             "--config.model.encoders.text.attention_impl=splash",
             "--config.model.decoder.loss_chunk=256"]
# The VL rows: the decoder's attention as `auto` picks it on a TPU (the ViT's
# 197 tokens are not a multiple of 128: XLA, as `auto` there) and the loss in
# chunks of 64 of the 256 positions on every target (no float32 [B, L, V]
# logits; a chunk of 256 is the whole sequence: one chunk, no saving).
_CHUNK = ["--config.model.decoder.loss_chunk=64"]
_VL_TPU = ["--config.model.decoder.attention_impl=splash"] + _CHUNK
ROWS = [
    ("paper_vl", "configs/pretrain_vl.py:size=paper", "v5e-16", _VL_TPU),
    ("paper_vl", "configs/pretrain_vl.py:size=paper", "v4-16", _VL_TPU),
    ("paper_vl", "configs/pretrain_vl.py:size=paper", "v5p-16", _VL_TPU),
    ("paper_vl", "configs/pretrain_vl.py:size=paper", "h100x8", _CHUNK),
    ("paper_lang", "configs/pretrain_lang.py:size=paper", "v5e-16",
     _LANG_TPU + ["--config.optimizer.grad_accum_steps=16"]),
    ("paper_lang", "configs/pretrain_lang.py:size=paper", "v4-16",
     _LANG_TPU + ["--config.optimizer.grad_accum_steps=16"]),
    ("paper_lang", "configs/pretrain_lang.py:size=paper", "v5p-16",
     _LANG_TPU + ["--config.optimizer.grad_accum_steps=4"]),
    # On a GPU `auto` picks cuDNN flash attention; this CPU host must name it.
    ("paper_lang", "configs/pretrain_lang.py:size=paper", "h100x8",
     ["--config.model.decoder.attention_impl=cudnn",
      "--config.model.encoders.text.attention_impl=cudnn",
      "--config.model.decoder.loss_chunk=256", "--config.optimizer.grad_accum_steps=4"]),
    # Llama-3.2-1B-shaped decoder + SigLIP-B/16-shaped ViT (presets.modern_vl).
    ("modern_vl", "configs/pretrain_vl.py:size=modern", "v5e-16", _VL_TPU),
    ("modern_vl", "configs/pretrain_vl.py:size=modern", "h100x8", _CHUNK),
]


HEADER = ("| model | target | mesh (data, fsdp, tensor) | batch x tokens (accum) | "
          "remat / stack options | memory per chip | HBM | fits | compile (s) | "
          "model TFLOP/step | step at peak (ms) |")
SEPARATOR = "|" + "---|" * (HEADER.count(" | ") + 1)


def _gib(n):
  return f"{n / 2 ** 30:.2f} GiB"


def _options(stacks):
  parts = []
  for stack, opts in stacks.items():
    if opts:
      parts.append(f"{stack.replace('encoders.', '')}: " +
                   ", ".join(f"{k}={v}" for k, v in opts.items()))
  return "; ".join(parts) or "-"


def table_row(model, r):
  m = r["mesh"]
  mem = _gib(r["total_bytes"]) if "total_bytes" in r else "> HBM (RESOURCE_EXHAUSTED)"
  options = _options(r["stacks"])
  chunk = r.get("overrides", {}).get("model.decoder.loss_chunk")
  if chunk:
    options += f"; loss in chunks of {chunk} positions"
  return (f"| {model} | {r['topology']} ({r['num_chips']} chips) | "
          f"{m['data']}, {m['fsdp']}, {m['tensor']} | {r['batch_size']} x {r['seq_len']} "
          f"({r['grad_accum_steps']}) | {options} | {mem} | "
          f"{_gib(r['hbm_bytes'])} | {'yes' if r['fits'] else 'no'} | {r['compile_s']:.0f} | "
          f"{r['model_flops_per_step'] / 1e12:.1f} | {r['step_time_at_peak_s'] * 1e3:.0f} |")
