"""Benchmarks of the memory layer (run from the repository root, e.g. `python -m benchmarks.locomo_recall`)."""
