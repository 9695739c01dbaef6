"""Benchmarks; not part of the package and not run in CI (`make bench`)."""
