#!/usr/bin/env bash
# The main job on the embedded default model, offline: set up, then `memlens run`
# (builds the organism on first use, ~5 min on 2 cores; later runs load it in seconds),
# then every stage and memlens-run/report.html (~4 min).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec .venv/bin/memlens run "$@"
