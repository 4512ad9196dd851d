"""The `ray` pool: replicas as detached actors on a Ray cluster reached by address (see `pool.py`)."""

from .pool import RayPool

__all__ = ["RayPool"]
