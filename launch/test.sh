#!/usr/bin/env bash
# The README's test command: fresh venv if needed, install with test extras, pytest.
# Extra arguments go to pytest (e.g. `bash launch/test.sh -k decoder`).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash launch/setup_venv.sh test
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec .venv/bin/python -m pytest -q -m "not slow" "$@" tests
