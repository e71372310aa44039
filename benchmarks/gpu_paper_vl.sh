#!/usr/bin/env bash
# The paper-size GPU benchmark (one prepared run on one H100):
#   correctness of the accelerator paths (benchmarks/gpu_checks.py), then
#   benchmarks/train_step.py at paper_vl size in bfloat16 with scanned layers,
#   fused (cuDNN) attention and a few remat policies; MFU against the chip's
#   published dense bf16 peak (metalm_jax/aot_targets by jax's device kind;
#   H100 SXM: 989 TFLOP/s), or PEAK_TFLOPS per GPU when given.
#
#   bash benchmarks/gpu_paper_vl.sh OUTDIR [PEAK_TFLOPS]
#   bash benchmarks/gpu_paper_vl.sh --help
#
# Writes OUTDIR/gpu.txt (nvidia-smi and the provenance of the run:
# metalm_jax/provenance.py), OUTDIR/checks.json and OUTDIR/<variant>.json,
# each JSON with its provenance. Packages the GPU image lacks can be carried
# as wheels in ./.whl (installed with --no-deps into /tmp/site; the image's
# own jax/jaxlib/flax are used).
set -uo pipefail
if [[ "${1:-}" == "--help" || "${1:-}" == "-h" ]]; then
  sed -n '2,/^[^#]/s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
  exit 0
fi
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUTDIR="${1:-/tmp/gpu_paper_vl}"
PEAK="${2:-0}"
mkdir -p "$OUTDIR"
PY="${PYTHON:-python3}"
if compgen -G ".whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH="/tmp/site:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_MEM_FRACTION=0.92
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUTDIR/gpu.txt"
"$PY" -m metalm_jax.provenance | tee -a "$OUTDIR/gpu.txt"
[[ -n "${SKIP_CHECKS:-}" ]] || "$PY" benchmarks/gpu_checks.py --json_out="$OUTDIR/checks.json" 2>&1 | grep -v "^W0\|^I0" | tail -20

run() {  # name, extra flags...
  local name="$1"; shift
  echo "=== $name"
  timeout 240 "$PY" benchmarks/train_step.py --config=configs/pretrain_vl.py:size=paper \
    --config.model.dtype=bfloat16 --steps=10 --warmup=2 --peak_tflops="$PEAK" \
    --json_out="$OUTDIR/$name.json" ${EXTRA:-} "$@" 2>&1 | grep -v "^W0\|^I0" | tail -22
}
L="${SEQ:-2048}"
# name:decoder remat policy:decoder attention:vision attention:batch
VARIANTS="${VARIANTS:-remat_none:none:auto:auto:8 remat_dots_b16:dots_with_no_batch_dims_saveable:auto:auto:16 xla_attn:none:xla:xla:8}"
for spec in $VARIANTS; do
  IFS=: read -r name policy dimpl vimpl b <<<"$spec"
  run "$name" --batch_size="$b" --seq_len="$L" --config.model.decoder.remat_policy="$policy" \
    --config.model.decoder.attention_impl="$dimpl" --config.model.encoders.vision.attention_impl="$vimpl"
  if [[ ! -f "$OUTDIR/$name.json" && "$vimpl" == auto ]]; then  # e.g. cuDNN refused the ViT's 197 tokens
    run "${name}_vit_xla" --batch_size="$b" --seq_len="$L" --config.model.decoder.remat_policy="$policy" \
      --config.model.decoder.attention_impl="$dimpl" --config.model.encoders.vision.attention_impl=xla
  fi
done
"$PY" - "$OUTDIR" <<'PY'
import glob, json, os, sys
rows = []
for f in sorted(glob.glob(os.path.join(sys.argv[1], "*.json"))):
  d = json.load(open(f))
  if "step_time_ms_median" in d:
    rows.append((os.path.basename(f)[:-5], d))
print("| variant | batch | step ms | tokens/s | model TFLOP/s | MFU |")
print("|---|---|---|---|---|---|")
for n, d in rows:
  print(f"| {n} | {d['batch']} | {d['step_time_ms_median']:.1f} | {d['tokens_per_sec']:,.0f} | "
        f"{d['achieved_tflops']:.0f} | {100 * d['mfu']:.1f}% |")
PY
