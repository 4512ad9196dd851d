"""Pieces of `benchmarks/gateway_overhead.py` and `routing_realtime.py`: a fake upstream, a load
generator, the peers, sim replicas, what starts and stops them, and argparse types for
the benchmarks' flags (`flags.py`).

Each module that runs as its own process (`upstream.py`, `loadgen.py`) is started by
path, so it can be pinned to a core with `taskset` without importing the others.
"""
