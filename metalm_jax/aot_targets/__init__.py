"""Compile targets for metalm_jax.aot: chips (HBM, dense bf16 peak) and
topology names, resolved to abstract devices from this CPU machine.

Topology names:
  v5e-16, v6e-256   Cloud TPU accelerator types; the number counts TensorCores,
  v4-16, v5p-16     so v4-16 / v5p-16 are 8 chips (2 cores each, one
                    "megacore" device per chip) and v5e-16 is 16 chips.
  v5e:2x2, v4:2x2x2 libtpu topology names: chips per torus dimension.
  h100x8, h100x16   GPUs; <chip>_target_config.txtpb in this folder (an XLA
                    GpuTargetConfig) describes the chip; 8 GPUs per host.

Chip facts are the vendors' published figures (HBM per chip; dense bf16
FLOP/s per chip). A GPU's HBM is read from its target config. A GPU chip
without a target config here is no compile target; its peak is still the MFU
denominator of training on it (DEVICE_KINDS maps jax's device_kind to a chip).
"""
from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, List, Tuple

from etils import epath

from metalm_jax.registry import Registry


@dataclasses.dataclass(frozen=True)
class Chip:
  platform: str          # "tpu" | "cuda"
  hbm_bytes: int         # per chip (GPU: read from the target config)
  peak_bf16_flops: float  # dense, per chip
  torus_dims: int = 0    # TPU: 2 (v5e, v6e) or 3 (v4, v5p)
  cores_per_chip: int = 1  # TensorCores counted in Cloud TPU names
  chip_config_name: str = ""  # libtpu: "megacore" = one device per 2-core chip
  compiler_options: Tuple[Tuple[str, Any], ...] = ()  # XLA options for compiles without the chip


CHIPS = Registry("compile target chip")
GiB = 2 ** 30
CHIPS.register("v4")(Chip("tpu", 32 * GiB, 275e12, 3, 2, "megacore"))
CHIPS.register("v5e")(Chip("tpu", 16 * GiB, 197e12, 2, 1))
CHIPS.register("v5p")(Chip("tpu", 95 * GiB, 459e12, 3, 2, "megacore"))
CHIPS.register("v6e")(Chip("tpu", 32 * GiB, 918e12, 2, 1))
# Without a GPU, XLA cannot autotune, and its default Triton GEMM tiling fails
# on some small dot shapes ("Couldn't find output tile sizes"): GEMMs go to cuBLAS.
NO_AUTOTUNE_GPU = (("xla_gpu_enable_triton_gemm", False),)
CHIPS.register("h100")(Chip("cuda", 0, 989e12, compiler_options=NO_AUTOTUNE_GPU))  # H100 SXM
# No target config (MFU peaks only). Source: NVIDIA's datasheets, which print
# bf16 tensor-core FLOP/s "with sparsity", twice the dense figure used here:
# H100 PCIe 1,513 TFLOPS (NVIDIA H100 Tensor Core GPU datasheet); H200 SXM
# 1,979 TFLOPS (NVIDIA H200 Tensor Core GPU datasheet); A100 (SXM4 and PCIe,
# 40 and 80 GB) 624 TFLOPS (NVIDIA A100 Tensor Core GPU datasheet).
CHIPS.register("h100_pcie")(Chip("cuda", 0, 756e12))
CHIPS.register("h200")(Chip("cuda", 0, 989e12))
CHIPS.register("a100")(Chip("cuda", 0, 312e12))
GPUS_PER_HOST = 8

# jax.Device.device_kind -> chip name above. TPU kinds as libtpu names them
# (v5e is "TPU v5 lite", v5p "TPU v5", v6e "TPU v6 lite"; the marketing names
# are listed too); GPU kinds are the CUDA device names.
DEVICE_KINDS = {
    "TPU v4": "v4",
    "TPU v5 lite": "v5e", "TPU v5e": "v5e",
    "TPU v5": "v5p", "TPU v5p": "v5p",
    "TPU v6 lite": "v6e", "TPU v6e": "v6e",
    "NVIDIA H100 80GB HBM3": "h100",
    "NVIDIA H100 PCIe": "h100_pcie",
    "NVIDIA H200": "h200",
    "NVIDIA A100-SXM4-80GB": "a100", "NVIDIA A100-SXM4-40GB": "a100",
    "NVIDIA A100 80GB PCIe": "a100", "NVIDIA A100-PCIE-40GB": "a100",
}


def chip_of_device_kind(device_kind: str) -> str:
  """DEVICE_KINDS[device_kind], or "" for a kind not in it (CPU, other chips)."""
  return DEVICE_KINDS.get(device_kind.strip(), "")


@dataclasses.dataclass(frozen=True)
class Target:
  name: str        # as the user wrote it
  chip_name: str
  chip: Chip
  topology: str    # libtpu topology name ("v5e:4x4") or GPU "slices x hosts x devices"
  num_chips: int
  hbm_bytes: int


def target_config_path(chip_name: str) -> epath.Path:
  return epath.resource_path("metalm_jax.aot_targets") / f"{chip_name}_target_config.txtpb"


def _gpu_hbm(text: str, chip_name: str) -> int:
  m = re.search(r"device_memory_size:\s*(\d+)", text)
  if not m:
    raise ValueError(f"{target_config_path(chip_name)}: no device_memory_size field")
  return int(m.group(1))


def torus_shape(chips: int, dims: int) -> List[int]:
  """Standard slice shape of a power-of-two chip count: 16 -> [4, 4] (2D),
  8 -> [2, 2, 2], 16 -> [2, 2, 4] (3D). Doubles the last of the smallest sides."""
  shape = [1] * dims if dims == 2 else [2, 2, 1]
  if chips < math.prod(shape) or chips & (chips - 1):
    raise ValueError(f"{chips} chips: expected a power of two >= {math.prod(shape)}")
  while math.prod(shape) < chips:
    low = min(shape)
    i = max(j for j, s in enumerate(shape) if s == low)
    shape[i] *= 2
  return shape


def resolve(name: str) -> Target:
  """'v5e-16' | 'v5e:4x4' | 'h100x8' -> Target (errors name --topology)."""
  def bad(why):
    return ValueError(f"--topology={name!r}: {why}; e.g. v5e-16, v4-16, v5e:2x2, h100x8 "
                      f"(chips: {list(CHIPS)})")
  m_gpu = re.fullmatch(r"([a-z0-9]+)x(\d+)", name)
  m_cloud = re.fullmatch(r"([a-z0-9]+)-(\d+)", name)
  m_torus = re.fullmatch(r"([a-z0-9]+):(\d+(?:x\d+)+)", name)
  m = m_gpu or m_cloud or m_torus
  if not m or m.group(1) not in CHIPS:
    raise bad("unknown name")
  chip_name = m.group(1)
  chip = CHIPS.get(chip_name)
  if m_gpu:
    if chip.platform != "cuda":
      raise bad(f"{chip_name} is a TPU; name it like {chip_name}-16 or {chip_name}:4x4")
    n = int(m.group(2))
    if n < 1 or (n > GPUS_PER_HOST and n % GPUS_PER_HOST):
      raise bad(f"{n} GPUs: up to {GPUS_PER_HOST} or a multiple of {GPUS_PER_HOST}")
    hosts, per_host = (1, n) if n <= GPUS_PER_HOST else (n // GPUS_PER_HOST, GPUS_PER_HOST)
    if not target_config_path(chip_name).exists():
      raise bad(f"no target config for {chip_name} ({target_config_path(chip_name).name})")
    hbm = _gpu_hbm(target_config_path(chip_name).read_text(), chip_name)
    return Target(name, chip_name, chip, f"1x{hosts}x{per_host}", n, hbm)
  if chip.platform != "tpu":
    raise bad(f"{chip_name} is a GPU; name it like {chip_name}x8")
  if m_cloud:
    cores = int(m.group(2))
    if cores % chip.cores_per_chip:
      raise bad(f"{chip_name} counts {chip.cores_per_chip} cores per chip")
    try:
      shape = torus_shape(cores // chip.cores_per_chip, chip.torus_dims)
    except ValueError as e:
      raise bad(str(e)) from None
  else:
    shape = [int(s) for s in m.group(2).split("x")]
    if len(shape) != chip.torus_dims:
      raise bad(f"{chip_name} slices have {chip.torus_dims} torus dimensions")
  topo = f"{chip_name}:" + "x".join(map(str, shape))
  return Target(name, chip_name, chip, topo, math.prod(shape), chip.hbm_bytes)


def devices(target: Target) -> List[Any]:
  """The topology's abstract devices (compile-only; no accelerator needed)."""
  from jax.experimental import topologies
  if target.chip.platform == "tpu":
    kw = {"chip_config_name": target.chip.chip_config_name} if target.chip.chip_config_name else {}
    topo = topologies.get_topology_desc(platform="tpu", topology_name=target.topology, **kw)
  else:
    topo = topologies.get_topology_desc(
        platform=target.chip.platform, topology_name="",
        target_config=target_config_path(target.chip_name).read_text(), topology=target.topology)
  devs = list(topo.devices)
  if len(devs) != target.num_chips:
    raise ValueError(f"--topology={target.name!r}: libtpu/XLA gave {len(devs)} devices for "
                     f"{target.topology}, expected {target.num_chips}")
  return devs
