"""The MFU denominator (train/metrics.py mfu_peak): a configured peak wins,
then the published dense bf16 peak of the chip named by jax's device_kind
(metalm_jax/aot_targets), then a measured matmul (CPU, unknown kinds).
Devices are stand-ins with the three attributes mfu_peak reads."""
import logging
import types

import jax
import jax.numpy as jnp
import pytest

from metalm_jax import aot_targets
from metalm_jax.train import metrics as metrics_lib


def fake_devices(kind, n=8, platform=None, processes=1):
  platform = platform or ("tpu" if kind.startswith("TPU") else "gpu")
  return [types.SimpleNamespace(platform=platform, device_kind=kind,
                                process_index=i * processes // n) for i in range(n)]


def no_measure(**_):
  raise AssertionError("measured a matmul although a peak was known")


@pytest.mark.parametrize("kind,chip,per_chip", [
    ("TPU v4", "v4", 275e12),
    ("TPU v5 lite", "v5e", 197e12), ("TPU v5e", "v5e", 197e12),
    ("TPU v5", "v5p", 459e12), ("TPU v5p", "v5p", 459e12),
    ("TPU v6 lite", "v6e", 918e12), ("TPU v6e", "v6e", 918e12),
    ("NVIDIA H100 80GB HBM3", "h100", 989e12), ("NVIDIA H100 PCIe", "h100_pcie", 756e12),
    ("NVIDIA H200", "h200", 989e12),
    ("NVIDIA A100-SXM4-80GB", "a100", 312e12), ("NVIDIA A100-SXM4-40GB", "a100", 312e12),
    ("NVIDIA A100 80GB PCIe", "a100", 312e12), ("NVIDIA A100-PCIE-40GB", "a100", 312e12),
])
def test_published_peak_by_device_kind(kind, chip, per_chip):
  peak = metrics_lib.mfu_peak(0.0, fake_devices(kind, 8), measure=no_measure)
  assert (peak.per_chip, peak.chips, peak.total) == (per_chip, 8, 8 * per_chip)
  assert peak.source == f"published dense bf16 peak of {chip} (device kind {kind!r})"
  assert aot_targets.chip_of_device_kind(kind) == chip


def test_log_line_names_the_published_source():
  peak = metrics_lib.mfu_peak(0.0, fake_devices("NVIDIA H100 80GB HBM3", 8), measure=no_measure)
  assert peak.describe() == ("MFU peak: 989e12 FLOP/s per chip x 8, published dense bf16 peak "
                             "of h100 (device kind 'NVIDIA H100 80GB HBM3')")


def test_cpu_measures_a_float32_matmul_per_process():
  asked = []

  def measure(dtype):
    asked.append(dtype)
    return 1.5e11

  devs = fake_devices("cpu", 8, platform="cpu", processes=2)  # 4 fake devices per process
  peak = metrics_lib.mfu_peak(0.0, devs, measure=measure)
  assert asked == [jnp.float32]
  assert (peak.per_chip, peak.chips, peak.total) == (1.5e11, 2, 3e11)
  assert peak.describe() == ("MFU peak: 0.15e12 FLOP/s per process x 2, measured float32 "
                             "matmul on cpu")


def test_unknown_accelerator_measures_bfloat16_and_warns(caplog):
  kind = "NVIDIA GeForce RTX 4090"
  assert aot_targets.chip_of_device_kind(kind) == ""
  with caplog.at_level(logging.WARNING):
    peak = metrics_lib.mfu_peak(0.0, fake_devices(kind, 2),
                                measure=lambda dtype: 1e14 if dtype == jnp.bfloat16 else 0.0)
  assert (peak.per_chip, peak.chips, peak.total) == (1e14, 2, 2e14)
  assert peak.source.startswith("measured bfloat16 matmul on gpu") and kind in peak.source
  assert kind in caplog.text and "DEVICE_KINDS" in caplog.text


@pytest.mark.parametrize("devices", [fake_devices("TPU v5 lite", 16),
                                     fake_devices("cpu", 8, platform="cpu")])
def test_configured_peak_wins(devices):
  peak = metrics_lib.mfu_peak(5e14, devices, measure=no_measure)
  chips = 1 if devices[0].platform == "cpu" else 16
  assert (peak.per_chip, peak.chips, peak.total) == (5e14, chips, 5e14 * chips)
  assert peak.source == "config metrics.peak_flops"


def test_default_devices_are_jax_devices():
  """conftest's 8 fake CPU devices in one process: one measured host peak."""
  peak = metrics_lib.mfu_peak(
      measure=lambda dtype: metrics_lib.measure_matmul_peak(128, dtype, seconds=0.05))
  assert jax.device_count() == 8 and peak.chips == 1
  assert peak.per_chip > 1e8 and peak.source == "measured float32 matmul on cpu"


def test_every_device_kind_names_a_chip_with_a_peak():
  for kind, chip in aot_targets.DEVICE_KINDS.items():
    c = aot_targets.CHIPS.get(chip)
    assert c.peak_bf16_flops >= 1e14, kind
    assert c.platform == ("tpu" if kind.startswith("TPU") else "cuda"), kind


@pytest.mark.parametrize("name", ["a100x8", "h200x8"])
def test_gpu_chip_without_target_config_is_no_compile_target(name):
  with pytest.raises(ValueError, match=f"--topology='{name}'.*no target config"):
    aot_targets.resolve(name)
