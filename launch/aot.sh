#!/usr/bin/env bash
# Ahead-of-time fit check: compiles the real train step for a TPU or GPU
# topology on this CPU machine and prints memory per chip against its HBM.
#
#   bash launch/aot.sh --config=configs/pretrain_vl.py:size=paper --topology=v5e-16
#   bash launch/aot.sh --config=configs/pretrain_lang.py:size=paper --topology=h100x8 \
#       --config.optimizer.grad_accum_steps=8
#
# TPU targets run in .venv-aot (the package + jax[tpu]: libtpu, ~700 MB);
# GPU targets (a name like h100x8 with a metalm_jax/aot_targets/<chip>_target_config.txtpb)
# run in .venv-aot-gpu (jax[cuda12], ~5.5 GB). Each venv is created on first use
# and reinstalled when setup.py or constraints.txt changes (jax pinned by it). Extra arguments go to
# `python -m metalm_jax.aot` (exit codes there: 0 fits, 3 does not fit).
# `bash launch/aot.sh --setup_only [--topology=T]` only creates/updates the
# venv (launch/test.sh does so for the TPU one before pytest starts).
# `bash launch/aot.sh --help` prints this; `--helpfull` goes to metalm_jax.aot.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"

TOPOLOGY=""
SETUP_ONLY=0
prev=""
for a in "$@"; do
  case "$a" in
    --topology=*) TOPOLOGY="${a#--topology=}" ;;
    --setup_only) SETUP_ONLY=1 ;;
    -h|--help) sed -n '2,/^[^#]/s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; exit 0 ;;  # this header is the usage
  esac
  [[ "$prev" == "--topology" ]] && TOPOLOGY="$a"
  prev="$a"
done

VENV="$ROOT/.venv-aot"
EXTRA="aot"
if [[ "$TOPOLOGY" =~ ^([a-z0-9]+)x[0-9]+$ ]] && \
   [[ -f "$ROOT/metalm_jax/aot_targets/${BASH_REMATCH[1]}_target_config.txtpb" ]]; then
  VENV="$ROOT/.venv-aot-gpu"
  EXTRA="aot-gpu"
fi

STAMP="$VENV/.metalm_installed"
WANT="$(cat "$ROOT/setup.py" "$ROOT/constraints.txt" | sha256sum | cut -d' ' -f1) $EXTRA"
if [[ ! -f "$STAMP" || "$(cat "$STAMP")" != "$WANT" ]]; then
  if [[ ! -x "$VENV/bin/python" ]]; then
    echo "[aot] creating $VENV" >&2
    "$PY" -m venv "$VENV"
  fi
  echo "[aot] installing metalm_jax[$EXTRA] into $VENV" >&2
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check \
    -c "$ROOT/constraints.txt" -e "$ROOT[$EXTRA]" 2>&1 \
    | grep -v "is ignored: it is neither a file nor a directory" >&2 || true
  "$VENV/bin/python" -c "import metalm_jax, jax" >/dev/null
  echo "$WANT" > "$STAMP"
fi
if [[ "$SETUP_ONLY" == "1" ]]; then
  echo "[aot] $VENV is ready" >&2
  exit 0
fi

# Compile only, on the CPU: no accelerator is opened and nothing is asked of a
# metadata server (libtpu otherwise queries GCE metadata for its topology).
# Several compiles may run at once: libtpu's one-process-per-host lock
# (/tmp/libtpu_lockfile) guards real TPUs, which are never opened here.
export JAX_PLATFORMS=cpu TPU_SKIP_MDS_QUERY=1 ALLOW_MULTIPLE_LIBTPU_LOAD=1 \
  TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-3}"
exec "$VENV/bin/python" -m metalm_jax.aot "$@"
