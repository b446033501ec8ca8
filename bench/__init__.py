"""Benchmarks of ../shared/BENCH.md: each scenario beside its baseline, in the same run."""
