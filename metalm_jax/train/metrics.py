"""Training metrics: clu.metrics accumulation, FLOPs/MFU, and writers
(TensorBoard events via tensorboardX, WORKDIR/metrics.jsonl, a console
progress line, a loss-curve PNG).

FLOPs per example (what MFU counts), summed over the model's components:
  decoder:          n = L decoder positions
  encoder `name`:   n = max_items * slot_length (ViT patches+cls, BERT max_len),
                    its connector the same n; the modality record's
                    `flops_tokens(cfg)` (models/modalities/;
                    {subtree: (n per item, c)}) sets n and c
                    for parts of it (the video encoder's per-frame ViT sees
                    frames * tokens per clip, its temporal layers frames)
  per component, training FLOPs = sum over matmul weights W of 2*|W|*n*k(W)
                                + sum over attention layers of 4*c*d_attn*n*k(layer)
  with |W| the weight's size (Dense/DenseGeneral/Conv kernels, plus the tied
  output embedding of the decoder), c the context the layer attends over (L for
  the decoder, the item length for encoders), d_attn = heads * head_dim, and
  k = 3 (forward + backward) for trainable weights, k = 1 for frozen ones
  (forward only). Padding positions count: this is the work the device does.
"""
# No `from __future__ import annotations`: clu reads the field annotations.

import dataclasses
import io
import logging
import math
import sys
import tempfile
import time
from typing import Callable, Dict, Iterable, Mapping, Optional, Sequence

import flax
import jax
import jax.numpy as jnp
import numpy as np
from clu import metrics as clu_metrics

from metalm_jax import aot_targets
from metalm_jax import batch as batch_lib
from metalm_jax import optional
from metalm_jax import storage
from metalm_jax.models import layout
from metalm_jax.models import modalities
from metalm_jax.train import metrics_log
from metalm_jax.train.state import map_with_names, trained_fraction

METRICS_FILE = metrics_log.METRICS_FILE
LOSS_PNG = "loss_curve.png"
TB_SUBDIR = "tensorboard"


@flax.struct.dataclass
class TrainMetrics(clu_metrics.Collection):
  loss: clu_metrics.Average.from_output("loss")
  accuracy: clu_metrics.Average.from_output("accuracy")
  grad_norm: clu_metrics.Average.from_output("grad_norm")
  learning_rate: clu_metrics.LastValue.from_output("learning_rate")


def _component_tokens(model_cfg, seq_len: int) -> Dict[str, tuple]:
  """component -> (tokens per example, attention context)."""
  out = {"decoder": (seq_len, seq_len)}
  for name, enc in model_cfg.encoders.items():
    t = batch_lib.slot_length(enc)
    out[f"encoders_{name}"] = (enc.max_items * t, t)
    out[f"connectors_{name}"] = (enc.max_items * t, t)
    parts = modalities.by_encoder_type(enc.type).flops_tokens
    for sub, (n, ctx) in (parts(enc) if parts else {}).items():
      out[f"encoders_{name}/{sub}"] = (enc.max_items * n, ctx)
  return out


def flops_per_example(model_cfg, params, trainable, seq_len: int) -> float:
  """Training FLOPs for one example of `seq_len` decoder positions (formula above).
  A stacked param of scanned layers ([layers, ...]) counts per layer, each
  layer with its own k (frozen layer slices of a stack count forward only)."""
  comp = _component_tokens(model_cfg, seq_len)
  tied = model_cfg.decoder.tie_embeddings
  total = 0.0
  names = {}
  map_with_names(lambda n, x: names.__setitem__(n, x.shape), params)
  train = {}
  map_with_names(lambda n, t: train.__setitem__(n, np.asarray(t, bool)), trainable)
  for n, shape in names.items():
    leaf = n.split("/")[-1]
    top = max((c for c in comp if n.startswith(c + "/")), key=len, default=n.split("/")[0])
    if top not in comp:
      raise ValueError(f"param {n!r}: unknown component {top!r} for the FLOPs count")
    tokens, ctx = comp[top]
    per_layer = tuple(shape[1:]) if layout.is_stacked_name(n) else tuple(shape)
    layers = shape[0] if layout.is_stacked_name(n) else 1
    k = float(np.sum(1.0 + 2.0 * np.broadcast_to(train[n], (layers,))))  # sum over layers
    if leaf == "kernel" or (tied and n == "decoder/embedder/embedding"):
      total += 2.0 * math.prod(per_layer) * tokens * k
    if n.endswith("attn/query/kernel"):
      d_attn = math.prod(per_layer[1:])
      total += 4.0 * ctx * d_attn * tokens * k
  return total


def measure_matmul_peak(size: int = 1024, dtype=jnp.float32, seconds: float = 1.0) -> float:
  """Best FLOP/s of a square matmul on the default device."""
  key = jax.random.key(0)
  a = jax.random.normal(key, (size, size), dtype)
  b = jax.random.normal(jax.random.fold_in(key, 1), (size, size), dtype)
  f = jax.jit(lambda x, y: x @ y)
  f(a, b).block_until_ready()
  best, start = float("inf"), time.perf_counter()
  while time.perf_counter() - start < seconds:
    t0 = time.perf_counter()
    f(a, b).block_until_ready()
    best = min(best, time.perf_counter() - t0)
  return 2.0 * size ** 3 / best


def matmul_dtype(platform: str):
  """The dtype of a measured peak: float32 on CPU (CPU runs train in float32),
  bfloat16 on an accelerator (as the published peaks are)."""
  return jnp.float32 if platform == "cpu" else jnp.bfloat16


@dataclasses.dataclass(frozen=True)
class Peak:
  """The MFU denominator: `per_chip` FLOP/s times `chips`. On CPU the fake
  devices of a process share its host's cores, so a "chip" is a process."""
  per_chip: float
  chips: int
  source: str
  unit: str = "chip"

  @property
  def total(self) -> float:
    return self.per_chip * self.chips

  def describe(self) -> str:
    return (f"MFU peak: {self.per_chip / 1e12:.4g}e12 FLOP/s per {self.unit} x {self.chips}, "
            f"{self.source}")


def mfu_peak(configured: float = 0.0, devices: Optional[Sequence] = None,
             measure: Callable[..., float] = measure_matmul_peak) -> Peak:
  """The peak FLOP/s that MFU divides by, per chip, in this order:
  `configured` (config metrics.peak_flops) when > 0; the published dense bf16
  peak of the devices' chip (aot_targets.DEVICE_KINDS by jax's device_kind);
  else (CPU, a device kind not in the table) `measure(dtype=...)`, a square
  matmul timed now. `devices` (default jax.devices()) need .platform,
  .device_kind and .process_index."""
  devices = list(jax.devices() if devices is None else devices)
  first = devices[0]
  cpu = first.platform == "cpu"
  chips = len({d.process_index for d in devices}) if cpu else len(devices)
  unit = "process" if cpu else "chip"
  if configured > 0:
    return Peak(float(configured), chips, "config metrics.peak_flops", unit)
  chip = "" if cpu else aot_targets.chip_of_device_kind(first.device_kind)
  if chip:
    return Peak(aot_targets.CHIPS.get(chip).peak_bf16_flops, chips,
                f"published dense bf16 peak of {chip} (device kind {first.device_kind!r})", unit)
  if not cpu:
    logging.warning("device kind %r is not in metalm_jax.aot_targets.DEVICE_KINDS: MFU is "
                    "against a measured matmul, not the chip's published peak (set "
                    "config.metrics.peak_flops to the chip's dense peak)", first.device_kind)
  dtype = matmul_dtype(first.platform)
  source = f"measured {jnp.dtype(dtype).name} matmul on {first.platform}"
  if not cpu:
    source += f" (device kind {first.device_kind!r}: no published peak in aot_targets)"
  return Peak(float(measure(dtype=dtype)), chips, source, unit)


def _fmt_time(s: float) -> str:
  s = int(max(s, 0))
  return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def _summary_writer_class():
  """tensorboardX.SummaryWriter without its optional torch import: the writer
  tries `import torch` only to accept torch tensors (we log Python floats),
  which adds 3-4 s to every training start where torch is installed (the
  test and hf extras). Torch is hidden for that one import unless something
  imported it already."""
  if "torch" in sys.modules:
    from tensorboardX import SummaryWriter
    return SummaryWriter
  sys.modules["torch"] = None  # `import torch` raises ImportError while set
  try:
    from tensorboardX import SummaryWriter
  finally:
    del sys.modules["torch"]
  return SummaryWriter


class Writer:
  """TensorBoard + metrics.jsonl (metrics_log.py's scheme) + console; only
  process 0 writes. On a remote workdir the TensorBoard events are written to a
  local temporary dir (tensorboardX's own writer appends) and the event file
  is copied up after each write."""

  def __init__(self, workdir: str, enabled: bool = True):
    self.enabled = enabled
    self.log = metrics_log.MetricsLog(workdir)
    self.tb = None
    self._tb_local = self._tb_remote = None
    if enabled:
      SummaryWriter = _summary_writer_class()
      tb_dir = storage.join(workdir, TB_SUBDIR)
      if storage.is_remote(tb_dir):
        # Local by intent: a staging dir for tensorboardX, mirrored to tb_dir.
        self._tb_local, self._tb_remote = tempfile.mkdtemp(prefix="metalm_tb_"), tb_dir
        tb_dir = self._tb_local
      self.tb = SummaryWriter(tb_dir)

  def rewind(self, step: Optional[int]) -> None:
    """Drops jsonl records after `step` (None: all); called on every start."""
    if self.enabled:
      self.log.rewind(step)

  def write(self, step: int, scalars: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    clean = {k: float(v) for k, v in scalars.items()}
    self.log.write({"step": int(step), **clean})
    for k, v in clean.items():
      if math.isfinite(v):
        self.tb.add_scalar(k, v, step)
    with storage.errors(f"writing TensorBoard events to {self._tb_remote}"):
      self._flush_tb()

  def _flush_tb(self) -> None:
    self.tb.flush()
    if self._tb_local is not None:
      for f in storage.path(self._tb_local).iterdir():
        storage.copy(f, storage.join(self._tb_remote, f.name))

  def write_text(self, tag: str, text: str) -> None:
    if self.enabled:
      self.tb.add_text(tag, text, 0)

  def close(self) -> None:
    if self.tb is not None:
      self._flush_tb()
      self.tb.close()
      self.tb = None
    if self.enabled:
      self.log.close()


read_jsonl = metrics_log.read_jsonl
read_metrics = metrics_log.read_metrics


class Progress:
  """Console line with steps/s, tokens/s, MFU and ETA."""

  def __init__(self, total_steps: int, start_step: int):
    self.total, self.last_step, self.last_t = total_steps, start_step, time.perf_counter()

  def rates(self, step: int) -> Dict[str, float]:
    now = time.perf_counter()
    dt, ds = now - self.last_t, step - self.last_step
    self.last_step, self.last_t = step, now
    return {"steps_per_sec": ds / dt if dt > 0 else 0.0, "interval_sec": dt}

  def line(self, step: int, scalars: Mapping[str, float]) -> str:
    sps = scalars.get("steps_per_sec", 0.0)
    eta = (self.total - step) / sps if sps > 0 else float("nan")
    parts = [f"step {step}/{self.total}"]
    if "loss" in scalars:  # absent when every step since the last line was skipped
      parts.append(f"loss {scalars['loss']:.4f}")
    if scalars.get("skipped_nonfinite_steps"):
      parts.append(f"skipped {scalars['skipped_nonfinite_steps']:.0f} non-finite")
    if "accuracy" in scalars:
      parts.append(f"acc {scalars['accuracy']:.3f}")
    parts.append(f"{sps:.2f} steps/s")
    if "tokens_per_sec" in scalars:
      parts.append(f"{scalars['tokens_per_sec']:.0f} tok/s")
    if "mfu" in scalars:
      parts.append(f"MFU {100 * scalars['mfu']:.1f}%")
    if math.isfinite(eta):
      parts.append(f"ETA {_fmt_time(eta)}")
    return " | ".join(parts)


def plot_losses(workdir: str, keys: Iterable[str] = ("loss", "eval_loss")) -> Optional[str]:
  """PNG of the jsonl loss curves; returns its path (None without records)."""
  rows = read_metrics(workdir)
  if not rows:
    return None
  optional.require("matplotlib", "the loss curve (plot_losses)").use("Agg")
  plt = optional.require("matplotlib.pyplot", "the loss curve (plot_losses)")
  fig, ax = plt.subplots(figsize=(6, 4))
  drawn = False
  for k in keys:
    pts = [(r["step"], r[k]) for r in rows if k in r]
    if pts:
      ax.plot(*zip(*pts), marker="." if k != "loss" else None, label=k)
      drawn = True
  if not drawn:
    plt.close(fig)
    return None
  ax.set_xlabel("step")
  ax.set_ylabel("cross-entropy (nats/token)")
  ax.legend()
  ax.grid(alpha=0.3)
  buf = io.BytesIO()
  fig.tight_layout()
  fig.savefig(buf, format="png", dpi=100)
  plt.close(fig)
  return storage.write_bytes(storage.join(workdir, LOSS_PNG), buf.getvalue())


def plot_losses_or_warn(workdir: str) -> Optional[str]:
  """plot_losses, but a failure to plot is a logged warning: a run that
  finished training never fails because of its picture."""
  try:
    return plot_losses(workdir)
  except Exception as e:  # noqa: BLE001  matplotlib, storage, bad records: all non-fatal here
    logging.warning("loss curve not written (%s: %s)", type(e).__name__, e)
    return None


def log_parameter_overview(params, trainable) -> str:
  """Table of parameters (clu) plus trainable / frozen totals; logged and returned."""
  from clu import parameter_overview
  table = parameter_overview.get_parameter_overview(params, include_stats=False)
  sizes = {"trainable": 0, "frozen": 0}
  flat_p = jax.tree.leaves(params)
  flat_t = jax.tree.leaves(trainable)
  for x, t in zip(flat_p, flat_t):
    size, frac = int(np.prod(x.shape)), trained_fraction(t)
    sizes["trainable"] += int(round(size * frac))
    sizes["frozen"] += size - int(round(size * frac))
  text = f"{table}\ntrainable params: {sizes['trainable']:,}  frozen: {sizes['frozen']:,}"
  logging.info("Parameter overview:\n%s", text)
  return text
