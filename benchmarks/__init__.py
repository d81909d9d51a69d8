"""Benchmarks of debiascl against peer libraries and hand-written equivalents (``run_all``)."""
