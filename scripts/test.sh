#!/usr/bin/env bash
# The test command: set up (if needed), lint, then run the whole test suite.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh || exit 1
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=68719476736
.venv/bin/ruff check src tests benchmarks scripts experiments || exit 1
.venv/bin/ruff format --check --quiet src tests benchmarks scripts experiments || exit 1
.venv/bin/python -m pytest "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "test.sh: pytest collected no tests: the test setup is broken" >&2
  exit 1
fi
exit "$rc"
