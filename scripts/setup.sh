#!/usr/bin/env bash
# Create ./.venv (ignored by git) and install bts_monai with its test tools into it.
# torch is installed first, on its own: a bare "torch" requirement on a machine without torch
# pulls a multi-GB CUDA build. BTS_TORCH chooses it (default torch==2.13.0, which the project's
# CPU machines hold on disk); see the README for CPU-only and CUDA installs elsewhere.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
BTS_TORCH=${BTS_TORCH:-torch==2.13.0}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  echo "installing $BTS_TORCH ..."
  .venv/bin/python -m pip install -q "$BTS_TORCH"
fi
.venv/bin/python -m pip install -q -e ".[dev]"
