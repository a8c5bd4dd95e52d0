#!/usr/bin/env bash
# Set up with the dev extras, then run the test suite (both tiers) offline; then the TransformerLens 3
# compatibility tests in a second environment (.venv-tl3) unless MEMLENS_SKIP_TL3=1.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh dev
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
# architecture (layers, no import cycles; contracts in pyproject.toml) and declared dependencies
.venv/bin/lint-imports --no-cache
.venv/bin/deptry .
# both tiers: the fast one (pytest's default selection) and the slow one (needs the organism)
.venv/bin/python -m pytest -m "slow or not slow" "$@"
if [ "${MEMLENS_SKIP_TL3:-0}" != "1" ]; then
  pip_install() {
    local log
    log=$(mktemp)
    if ! "$1" -m pip install -q "${@:2}" >"$log" 2>&1; then
      grep -v '^WARNING: Location' "$log" >&2
      rm -f "$log"
      echo "test.sh: pip install ${*:2} failed" >&2
      return 1
    fi
    rm -f "$log"
  }
  [ -x .venv-tl3/bin/python ] || "${PYTHON:-python3}" -m venv .venv-tl3
  .venv-tl3/bin/python -c "import torch" 2>/dev/null || pip_install .venv-tl3/bin/python torch==2.13.0
  .venv-tl3/bin/python -c "import transformer_lens, pytest" 2>/dev/null \
    || pip_install .venv-tl3/bin/python "transformer-lens>=3.9,<4" pytest
  pip_install .venv-tl3/bin/python --no-deps -e .
  # TL3's environment has no beartype: run without the shape-checking import hook
  .venv-tl3/bin/python -m pytest -p no:cacheprovider -o addopts="-ra --strict-markers" tests/test_tl3.py "$@"
fi
