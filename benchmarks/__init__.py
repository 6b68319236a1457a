"""Benchmark programs of the engine and its peers: `python -m benchmarks.NAME --help`."""
