#!/usr/bin/env bash
# The main job: set up (if needed), then train on built-in Fashion-MNIST and print the results.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=68719476736
exec .venv/bin/debiascl demo "$@"
