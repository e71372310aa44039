#!/usr/bin/env bash
# Creates .venv in the repo if missing and installs the package with the given
# extras (default: none), pinned to the tested set in constraints.txt
# (`pip install -c constraints.txt`; setup.py itself only holds ranges).
# Run by local.sh and test.sh. VENV=/path overrides the venv location.
#
#   bash launch/setup_venv.sh [EXTRAS]      # e.g. test, plot, hf,gcs (setup.py extras)
#   bash launch/setup_venv.sh --help
#
# torch (extras hf / test): PyPI's Linux torch==2.13.0 is a CUDA build that
# drags several GB of nvidia-* wheels. When the CPU index
# (https://download.pytorch.org/whl/cpu) answers within 5 s, torch==2.13.0+cpu
# is installed from it first, and the install below finds it satisfied. When it
# does not, this script says so and pip takes torch==2.13.0 from the configured
# indexes and find-links: a local CPU wheel if one lies there (2.13.0+cpu ranks
# above 2.13.0), else PyPI's CUDA build.
set -euo pipefail
if [[ "${1:-}" == --help || "${1:-}" == -h ]]; then
  sed -n '2,/^[^#]/s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"  # this header is the usage
  exit 0
fi
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
EXTRAS="${1:-}"
PY="${PYTHON:-python3}"
VENV="${VENV:-$ROOT/.venv}"
CONSTRAINTS="$ROOT/constraints.txt"
TORCH_CPU_INDEX="${TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}"
if [[ ! -x "$VENV/bin/python" ]]; then
  echo "[setup] creating $VENV"
  "$PY" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip install -q --disable-pip-version-check -c "$CONSTRAINTS")
# pip's own failure still fails the script (pipefail); only its noise is dropped.
quiet() { "$@" 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }; }

if [[ ",$EXTRAS," =~ ,(hf|test), ]]; then
  TORCH="$(grep -E '^torch==' "$CONSTRAINTS")"
  if "$VENV/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('torch') != '${TORCH#torch==}+cpu')" 2>/dev/null; then
    echo "[setup] ${TORCH}+cpu already installed"
  elif "$VENV/bin/python" - "$TORCH_CPU_INDEX/torch/" <<'PYEOF' 2>/dev/null
import sys, urllib.request
urllib.request.urlopen(sys.argv[1], timeout=5).close()
PYEOF
  then
    echo "[setup] installing $TORCH (CPU build) from $TORCH_CPU_INDEX"
    quiet "${PIP[@]}" --no-deps --index-url "$TORCH_CPU_INDEX" "$TORCH"
  else
    echo "[setup] $TORCH_CPU_INDEX does not answer: $TORCH comes from the configured" \
         "indexes (a local CPU wheel if one is there, else PyPI's CUDA build, several GB)"
  fi
fi

SPEC="$ROOT"
[[ -n "$EXTRAS" ]] && SPEC="$ROOT[$EXTRAS]"
echo "[setup] installing metalm_jax${EXTRAS:+[$EXTRAS]} (constraints.txt)"
quiet "${PIP[@]}" -e "$SPEC"
"$VENV/bin/python" -c "import metalm_jax, jax, flax, optax" >/dev/null
