#!/usr/bin/env bash
# The main job on the embedded default model, offline: set up, then `memlens run`
# (builds the organism on first use, ~10 min on 2 cores; later runs load it in seconds).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec .venv/bin/memlens run "$@"
