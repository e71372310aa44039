"""Correctness checks of the accelerator paths, run before the GPU benchmark.

    python benchmarks/gpu_checks.py [--json_out=FILE]   # FILE: the results and their provenance

1. Attention: the cuDNN flash-attention path (bfloat16) against the XLA path
   in float32 on the same inputs, causal + packing-segment mask, max |diff|
   reported against a bfloat16 tolerance.
2. The compiled cuDNN attention contains the fused custom call and no
   float32 [B, H, L, L] buffer (read from the optimized HLO text).
3. A model with scanned layers (decoder and encoders) gives the same logits as the same params
   unrolled (float32, XLA attention).
"""
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402

from metalm_jax import absl_run  # noqa: E402

flags.DEFINE_string("json_out", "", "also write the results (and their provenance) here")
FLAGS = flags.FLAGS


def _attention_inputs(b=2, l=512, h=8, d=64, seed=0):
  import jax
  import jax.numpy as jnp
  ks = jax.random.split(jax.random.key(seed), 3)
  q, k, v = (jax.random.normal(kk, (b, l, h, d), jnp.float32) for kk in ks)
  seg = jnp.concatenate([jnp.ones((b, l // 2), jnp.int32),
                         2 * jnp.ones((b, l - l // 2), jnp.int32)], 1)
  mask = (seg[:, None, :, None] == seg[:, None, None, :])
  return q, k, v, mask


def check_attention():
  import jax
  import jax.numpy as jnp
  import numpy as np
  q, k, v, mask = _attention_inputs()
  bf = lambda x: x.astype(jnp.bfloat16)
  fused = jax.jit(lambda q, k, v, m: jax.nn.dot_product_attention(
      q, k, v, mask=m, is_causal=True, implementation="cudnn"))
  ref = jax.jit(lambda q, k, v, m: jax.nn.dot_product_attention(
      q, k, v, mask=m, is_causal=True, implementation="xla"))
  out = np.asarray(fused(bf(q), bf(k), bf(v), mask).astype(jnp.float32))
  want = np.asarray(ref(q, k, v, mask))
  err = float(np.max(np.abs(out - want)))
  hlo = fused.lower(bf(q), bf(k), bf(v), mask).compile().as_text()
  b, l, h, _ = q.shape
  big_f32 = re.findall(rf"f32\[{b},{h},{l},{l}\]", hlo)
  return {"attention_cudnn_vs_xla_f32_max_abs": err, "attention_tol": 2e-2,
          "attention_ok": err <= 2e-2,
          "cudnn_custom_call": "cudnn" in hlo.lower() and "custom-call" in hlo,
          "f32_BHLL_buffers_in_hlo": len(big_f32)}


def check_scan():
  import jax
  import jax.numpy as jnp
  import numpy as np
  from configs import pretrain_vl
  from metalm_jax import batch as batch_lib
  from metalm_jax.models import layout, metalm
  cfg = pretrain_vl.get_config("size=tiny").model
  cfg.decoder.attention_impl = "xla"
  unrolled = metalm.build_model(cfg)
  cfg_s = cfg.copy_and_resolve_references()
  for section in [cfg_s.decoder] + [cfg_s.encoders[n] for n in cfg_s.encoders]:
    section.scan_layers = True
  scanned = metalm.build_model(cfg_s)
  batch = jax.tree.map(jnp.asarray, batch_lib.dummy_batch(cfg, 2, 64))
  batch["tokens"] = jax.random.randint(jax.random.key(1), (2, 64), 0, cfg.decoder.vocab_size)
  params = unrolled.init(jax.random.key(0), batch)["params"]
  params = jax.tree.map(lambda x: getattr(x, "value", x), params,
                        is_leaf=lambda x: hasattr(x, "value"))
  stacked = layout.stack(params)
  a = np.asarray(unrolled.apply({"params": params}, batch))
  s = np.asarray(scanned.apply({"params": stacked}, batch))
  err = float(np.max(np.abs(a - s)))
  return {"scan_vs_unrolled_max_abs": err, "scan_ok": err <= 1e-4}


def main(argv):
  del argv
  import jax
  from metalm_jax import provenance
  begun = provenance.start()
  out = {"jax": jax.__version__, "device": str(jax.devices()[0].device_kind)}
  for fn in (check_attention, check_scan):
    try:
      out.update(fn())
    except Exception as e:  # report and go on: the benchmark still runs
      out[fn.__name__ + "_error"] = f"{type(e).__name__}: {str(e)[:2000]}"
  for k, v in out.items():
    print(f"{k:>36}: {v}")
  if FLAGS.json_out:
    provenance.write_json(FLAGS.json_out, out, begun)


if __name__ == "__main__":
  absl_run.run(main)
