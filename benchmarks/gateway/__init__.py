"""Pieces of `benchmarks/gateway_overhead.py`: a fake upstream, a load generator, the peers.

Each module that runs as its own process (`upstream.py`, `loadgen.py`) is started by
path, so it can be pinned to a core with `taskset` without importing the others.
"""
