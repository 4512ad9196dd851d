"""The `kubernetes` pool: replicas as pods on a Kubernetes cluster, reached through a kubeconfig context.

`render` (pure) turns replica specs into Kubernetes objects and needs nothing but ComputeNet;
`KubernetesPool` applies and watches them, and needs the `kubernetes` extra for kubeconfig loading.
"""

from .driver import KubernetesPool
from .render import render_manifests

__all__ = ["KubernetesPool", "render_manifests"]
