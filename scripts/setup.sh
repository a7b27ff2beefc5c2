#!/usr/bin/env bash
# Set up zhtune on a fresh machine: a virtual environment in .venv with torch pinned first
# (a bare "torch" requirement would pull a multi-GB CUDA build), the package with its extras,
# and the system fonts/browser that the report needs. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TORCH_SPEC=${ZHTUNE_TORCH:-torch==2.13.0}
EXTRAS=${ZHTUNE_EXTRAS:-dev}

[ -x .venv/bin/python ] || "$PY" -m venv .venv
# pip's status survives the filter (pipefail); the filter only hides this machine's mirror notices.
quiet() { "$@" 2>&1 | { grep -vE "^WARNING: Location .* is ignored" || true; }; }
quiet .venv/bin/python -m pip install -q "$TORCH_SPEC"
quiet .venv/bin/python -m pip install -q -e ".[$EXTRAS]"
if [ -f scripts/install_system_deps.sh ]; then
  bash scripts/install_system_deps.sh
fi
.venv/bin/zhtune --version
