"""The control plane: reconciler, status, control API."""

from .api import create_control_app
from .reconciler import Reconciler

__all__ = ["Reconciler", "create_control_app"]
