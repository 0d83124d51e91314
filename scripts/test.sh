#!/usr/bin/env bash
# Quick start, command 2: set up, then lint (ruff) and run the whole test suite.
# Tests that need the real cases read BTS_REAL_DATA (set here when ../shared/data exists).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ -z "${BTS_REAL_DATA:-}" ] && [ -d ../shared/data ]; then
  export BTS_REAL_DATA="$(cd ../shared/data && pwd)"
fi
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
.venv/bin/ruff check bts_monai tests benchmarks
exec .venv/bin/python -m pytest "$@"
