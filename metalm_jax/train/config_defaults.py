"""Trainer fields shared by every training config (pretrain and finetune).

Config files add `model` and `data` and override what differs; every field
can be overridden on the command line (`--config.optimizer.lr=3e-4`).
"""
from __future__ import annotations

import ml_collections as mlc

from metalm_jax import presets


def optimizer(**kw) -> mlc.ConfigDict:
  """AdamW with linear warm-up then cosine/linear/constant decay.

  groups: {name: {regex, frozen, lr_mult}}; a param (name like
  'encoders_text/bert/layers_3/attn/query/kernel') joins the group whose regex
  matches (re.search; at most one may match), else the default group.
  Optional per group: exclude (a list of regexes; a name matching one is not
  in the group) and fallback (True: the group takes only params no other
  group matches). With model.decoder.lora on, the adapters train and the
  base is frozen unless a group here says otherwise (train/state.py
  resolve_groups).
  encoder_top_layers: {encoder name: k}: only the top k layers of that
  encoder train (and a final norm after them); its embeddings and lower
  layers are frozen; 0 freezes the encoder, -1 (or its num_layers) trains
  it all (train/state.py resolve_groups). The paper's language-only
  pretraining trains the top 2 of 24.
  """
  d = dict(lr=1e-3, b1=0.9, b2=0.98, eps=1e-8, weight_decay=0.01, warmup_steps=100,
           decay="cosine", end_lr_frac=0.1, clip_norm=1.0,
           no_decay_regex=r"(^|/)(bias|scale)$", grad_accum_steps=1,
           groups=mlc.ConfigDict({}, type_safe=False),
           encoder_top_layers=mlc.ConfigDict({}, type_safe=False))
  d.update(kw)
  return mlc.ConfigDict(d)


def trainer_config() -> mlc.ConfigDict:
  c = mlc.ConfigDict()
  c.seed = 0
  c.batch_size = 8                # global, over all processes
  c.total_steps = 1000            # 0 with init_from: eval-only run
  # Metrics leave the devices every log.every_steps (jsonl, TensorBoard, console).
  c.log = mlc.ConfigDict(dict(every_steps=10))
  # The loss on the validation split: every_steps (0 = off) over num_batches
  # batches of batch_size rows (0 = batch_size).
  c.eval_loss = mlc.ConfigDict(dict(every_steps=100, num_batches=4, batch_size=0))
  c.data_shards = 0               # pipeline shards; 0 = one per process (see train/input.py)
  c.optimizer = optimizer()
  c.max_nonfinite_steps = 3       # skipped steps (NaN/Inf, spikes) in a row before the run stops
  # A step whose loss is above factor x the median of the last `window`
  # applied losses is skipped like a NaN/Inf one (train/nonfinite.py); 0 = off.
  c.loss_spike = mlc.ConfigDict(dict(factor=10.0, window=32))
  c.mesh = mlc.ConfigDict(dict(data=-1, fsdp=1, tensor=1))  # -1 = infer from devices
  c.logical_rules = presets.logical_rules()
  c.sharding = mlc.ConfigDict(dict(min_fsdp_size=2 ** 14))  # start-up check threshold
  # restore_fallback: a latest step that cannot be restored falls back to the previous one.
  # gcs_request_retries: tensorstore's retry policy for gs:// checkpoints; a
  # bucket that stays unreachable fails the run after ~2 min instead of hanging.
  # replica_parallel: Orbax's replica-parallel save (auto: on for TPU only).
  c.checkpoint = mlc.ConfigDict(dict(
      every_steps=200, keep=3, async_save=True, restore_fallback=True, replica_parallel="auto",
      gcs_request_retries=dict(max_retries=8, initial_delay_s=1.0, max_delay_s=32.0)))
  # peak_flops: the MFU denominator per chip (CPU: per process); 0 = the chip's published
  # dense bf16 peak (metalm_jax/aot_targets), a matmul measured at start-up on CPU or an
  # unknown chip (train/metrics.py mfu_peak).
  c.metrics = mlc.ConfigDict(dict(peak_flops=0.0))
  c.init_from = ""                # workdir / checkpoints dir / params dir: params only
  c.init_components = mlc.ConfigDict({}, type_safe=False)  # top-level name -> params dir
  c.evals = mlc.ConfigDict({}, type_safe=False)             # name -> {type, every_steps, ...}
  c.compilation_cache_dir = ""    # persistent XLA compilation cache; "" = off
  # jax.profiler trace of steps start_step+1 .. start_step+num_steps into
  # WORKDIR/profile (train/profile.py); num_steps 0 = off.
  c.profile = mlc.ConfigDict(dict(start_step=10, num_steps=0))
  return c


def runlocal(c: mlc.ConfigDict, steps: int = 0) -> mlc.ConfigDict:
  """The `runlocal` arg of every training config: a quick smoke run of any
  size on one machine (100 steps unless `steps`, small batch, one data axis)."""
  c.total_steps = steps or 100
  c.log.every_steps, c.eval_loss.every_steps, c.checkpoint.every_steps = 5, 50, 50
  c.batch_size = min(c.batch_size, 8)
  c.optimizer.warmup_steps = min(c.optimizer.warmup_steps, 10)
  c.mesh.update(data=-1, fsdp=1, tensor=1)
  return c
