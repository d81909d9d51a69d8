"""``python -m benchmarks``: run every section and write docs/benchmarks.md (see run_all)."""

from benchmarks.run_all import main

main()
