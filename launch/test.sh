#!/usr/bin/env bash
# The README's test command: fresh venv if needed, install with test extras, pytest.
#
#   bash launch/test.sh                                    # unit + integration (not slow)
#   bash launch/test.sh -m "not slow and not integration"  # unit tests only
#   bash launch/test.sh -m "integration and not slow"      # integration tests only
#   bash launch/test.sh -m slow                            # the few long ones
#   bash launch/test.sh -k decoder                         # any other pytest arguments
#
# Extra arguments go to pytest; a `-m` given here replaces the default
# `-m "not slow"`. Markers (pytest.ini, --strict-markers): `integration` marks
# tests that run whole training or evaluation jobs, subprocesses, several
# processes or the GCS emulator; `slow` the long ones left out by default.
# pytest prints the 15 slowest tests at the end (--durations=15).
# Test files run on METALM_TEST_WORKERS pytest-xdist workers (default 2: most
# of a test's time is single-threaded XLA compilation and subprocess start-up,
# so two workers keep both cores busy); each file stays on one worker, so its
# module fixtures (shared compiles) are built once. METALM_TEST_WORKERS=0 runs
# everything in this process.
set -euo pipefail
if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
  sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p}' "${BASH_SOURCE[0]}"
  exit 0
fi
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash launch/setup_venv.sh test
# The AOT test compiles for a real TPU topology in .venv-aot (jax[tpu]: libtpu);
# it is set up here with the test venv, not inside the timed test run.
bash launch/aot.sh --setup_only
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
# Lint first (ruff.toml: pycodestyle, pyflakes, bugbear at 100 columns).
echo "[test] ruff check"
.venv/bin/ruff check --quiet .
WORKERS="${METALM_TEST_WORKERS:-2}"
XDIST=()
if [[ "$WORKERS" != "0" ]]; then
  XDIST=(-n "$WORKERS" --dist loadfile)
fi
exec .venv/bin/python -m pytest -q -m "not slow" --durations=15 "${XDIST[@]}" "$@" tests
