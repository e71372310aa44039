"""Ahead-of-time fit check: topology names, and one real TPU compile of the
tiny config for v5e:2x2 through launch/aot.sh (its own venv with jax[tpu],
created on first use), plus an oversized variant that must report
"does not fit", and the tiny step with the decoder on the Pallas splash
attention kernel (its TPU custom calls, no float32 [B, H, L, L] scores)."""
import json
import math
import os
import re
import subprocess

import jax
import numpy as np
import pytest

from configs import pretrain_vl
from metalm_jax import aot_targets
from metalm_jax.train import metrics as metrics_lib
from metalm_jax.train import trainer as trainer_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = "configs/pretrain_vl.py:size=tiny"


@pytest.mark.parametrize("name,topology,chips", [
    ("v5e-16", "v5e:4x4", 16), ("v5e-256", "v5e:16x16", 256), ("v6e-16", "v6e:4x4", 16),
    ("v5e-8", "v5e:2x4", 8), ("v4-8", "v4:2x2x1", 4), ("v4-16", "v4:2x2x2", 8),
    ("v4-32", "v4:2x2x4", 16), ("v4-64", "v4:2x4x4", 32), ("v4-128", "v4:4x4x4", 64),
    ("v5p-16", "v5p:2x2x2", 8), ("v5e:2x2", "v5e:2x2", 4), ("v4:2x2x4", "v4:2x2x4", 16),
    ("h100x8", "1x1x8", 8), ("h100x4", "1x1x4", 4), ("h100x16", "1x2x8", 16),
])
def test_topology_names(name, topology, chips):
  t = aot_targets.resolve(name)
  assert (t.topology, t.num_chips) == (topology, chips)


def test_chip_memory():
  assert aot_targets.resolve("v5e-16").hbm_bytes == 16 * 2 ** 30
  assert aot_targets.resolve("v5p-16").hbm_bytes == 95 * 2 ** 30
  # The GPU's HBM comes from the packaged target config (H100 80GB HBM3).
  assert aot_targets.resolve("h100x8").hbm_bytes == 84929347584
  assert aot_targets.resolve("v4:2x2x2").chip.chip_config_name == "megacore"


@pytest.mark.parametrize("name,why", [
    ("v5e-12", "power of two"), ("v4-15", "2 cores per chip"), ("v5e:2x2x2", "2 torus"),
    ("v9-16", "unknown name"), ("h100-8", "is a GPU"), ("v5ex8", "is a TPU"),
    ("h100x12", "multiple of 8"), ("tpu", "unknown name"),
])
def test_bad_topology_names_say_why(name, why):
  with pytest.raises(ValueError, match=f"--topology='{name}'.*{why}"):
    aot_targets.resolve(name)


def test_compile_only_trainer_does_not_run():
  t = trainer_lib.Trainer(pretrain_vl.get_config("size=tiny"), None, devices=jax.devices()[:4])
  assert t.writer is None
  with pytest.raises(ValueError, match="compile-only"):
    t.run()


def _aot(tmp_path, name, *overrides):
  report = tmp_path / f"{name}.json"
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # conftest's are CPU flags
  p = subprocess.run(
      ["bash", "launch/aot.sh", f"--config={TINY}", "--topology=v5e:2x2", f"--report={report}",
       f"--hlo={tmp_path / name}.hlo", *overrides],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
  assert report.exists(), p.stdout[-2000:] + p.stderr[-4000:]
  return p, json.loads(report.read_text())


def _nbytes(tree):
  return sum(math.prod(x.shape) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


@pytest.mark.integration
def test_tiny_fits_on_v5e_2x2_and_oversized_does_not(tmp_path):
  p, r = _aot(tmp_path, "tiny")
  assert p.returncode == 0, p.stderr[-4000:]
  assert "FITS" in p.stdout and "per-chip memory" in p.stdout
  assert (r["num_chips"], r["mesh"], r["fits"]) == (4, {"data": 4, "fsdp": 1, "tensor": 1}, True)
  # The donated state (replicated over data=4) is aliased input -> output;
  # TPU layouts pad small arrays, so it may take up to ~2x its packed size.
  config = pretrain_vl.get_config("size=tiny")
  t = trainer_lib.Trainer(config, None, devices=jax.devices()[:4])
  state = _nbytes(t.abstract_state)
  assert state <= r["alias_bytes"] <= 2.5 * state, (state, r["alias_bytes"])
  assert r["alias_bytes"] <= r["argument_bytes"] and r["alias_bytes"] <= r["output_bytes"]
  assert r["total_bytes"] == (r["argument_bytes"] + r["output_bytes"] - r["alias_bytes"]
                              + r["temp_bytes"])
  assert 0 < r["temp_bytes"] < r["hbm_bytes"] / 100
  flops = metrics_lib.flops_per_example(config.model, t.abstract_state["params"], t.trainable,
                                        config.data.seq_len) * config.batch_size
  assert r["model_flops_per_step"] == pytest.approx(flops, rel=1e-9)
  assert r["compile_s"] > 0 and r["stacks"]["decoder"]["remat_policy"] == "none"
  # metalm_jax/provenance.py: the compile host's devices, not the target's
  assert r["provenance"]["platform"] == "cpu" and "--topology=v5e:2x2" in r["provenance"]["argv"]

  # A 2^24-word vocabulary replicated over data=4: 16 GiB of params + Adam
  # state per chip and 16 GiB of float32 logits; v5e has 16 GiB.
  big = ["--config.model.decoder.vocab_size=16777216"] + [
      f"--config.model.{s}.num_layers=1"
      for s in ("decoder", "encoders.vision", "encoders.text")]
  p, r = _aot(tmp_path, "big", *big)
  assert p.returncode == 3, p.stdout[-2000:] + p.stderr[-4000:]
  assert "DOES NOT FIT" in p.stdout and "Traceback" not in p.stderr
  assert r["fits"] is False and "RESOURCE_EXHAUSTED" in r["reason"]
  assert r["overrides"] == {"model.decoder.vocab_size": 2 ** 24, "model.decoder.num_layers": 1,
                            "model.encoders.vision.num_layers": 1,
                            "model.encoders.text.num_layers": 1}


def _float32_square(hlo_text, b, h, length):
  """float32 shapes of b * h * length^2 elements with two dims of `length`:
  attention scores [B, H, L, L] in any dim order or grouping."""
  hits = []
  for dims in re.findall(r"f32\[([0-9,]+)\]", hlo_text):
    shape = [int(d) for d in dims.split(",")]
    if math.prod(shape) == b * h * length ** 2 and shape.count(length) >= 2:
      hits.append(shape)
  return hits


@pytest.mark.integration
def test_tiny_decoder_on_splash_attention_compiles_for_v5e(tmp_path):
  """attention_impl=splash for the decoder (causal + packed segment ids):
  the compiled TPU step calls the splash kernels (forward, dq, dkv; one each
  per layer) and holds no float32 [B, H, L, L] buffer, at L = 256 (at
  L = 128 the kernel's lane-broadcast softmax statistics [B, H, L, 128] would
  have that shape too). The encoders' 16- and 17-token attention stays on
  XLA (lengths not multiples of 128)."""
  splash = ["--config.model.decoder.attention_impl=splash", "--config.data.seq_len=256"]
  p, r = _aot(tmp_path, "splash", *splash)
  assert p.returncode == 0, p.stderr[-4000:]
  assert r["fits"] and r["stacks"]["decoder"]["attention_impl"] == "splash"
  hlo = (tmp_path / "splash.hlo").read_text()
  config = pretrain_vl.get_config("size=tiny")
  layers_n, heads = config.model.decoder.num_layers, config.model.decoder.num_heads
  calls = re.findall(r"%(splash_mha_\w+?)(?:\.\d+)? = .*custom_call_target=\"tpu_custom_call\"",
                     hlo)
  kinds = {re.sub(r"_(no_)?residuals$", "", c) for c in calls}
  assert kinds == {"splash_mha_fwd_segmented", "splash_mha_dq_segmented",
                   "splash_mha_dkv_segmented"}, calls
  assert len(calls) == 3 * layers_n, calls
  per_chip_batch = config.batch_size // r["num_chips"]  # data=4
  assert not _float32_square(hlo, per_chip_batch, heads, 256)
