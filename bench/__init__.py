"""Benchmarks writing JSON (and PNG) results to bench/results/; never part of the test command."""
