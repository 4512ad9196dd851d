"""The `ray` pool: replicas as detached actors on a Ray cluster reached by address (see `pool.py`).

The driver itself never imports Ray (its agent process does), so Ray's presence is checked here: a
control plane without it then reports the Pool's driver unavailable and names the extra to install.
"""

from importlib.util import find_spec

if find_spec("ray") is None:
    raise ImportError("the ray pool needs Ray: pip install 'computenet[ray]'", name="ray")

from .pool import RayPool

__all__ = ["RayPool"]
