"""Pure placement: inventory, requests, filters and scorers, gangs, preemption, quotas, trace replay.

Nothing here does I/O; the same inputs and seed give the same placements.
"""
