#!/usr/bin/env bash
# Creates .venv in the repo if missing and installs the package with the given
# extras (default: none). Sourced by local.sh and test.sh.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
EXTRAS="${1:-}"
PY="${PYTHON:-python3}"
if [[ ! -x "$ROOT/.venv/bin/python" ]]; then
  echo "[setup] creating $ROOT/.venv"
  "$PY" -m venv "$ROOT/.venv"
fi
SPEC="$ROOT"
[[ -n "$EXTRAS" ]] && SPEC="$ROOT[$EXTRAS]"
echo "[setup] installing metalm_jax${EXTRAS:+[$EXTRAS]}"
"$ROOT/.venv/bin/python" -m pip install -q --disable-pip-version-check -e "$SPEC" 2>&1 \
  | grep -v "is ignored: it is neither a file nor a directory" || true
"$ROOT/.venv/bin/python" -c "import metalm_jax, jax, flax, optax" >/dev/null
