"""Reaching a cluster: a kubeconfig context (or the pod's service account) to a URL, TLS and a token.

The official `kubernetes` package's loader reads the kubeconfig: it knows every way a context can
authenticate (client certificates, tokens, token files, exec plugins such as `aws eks get-token`, with
their refresh). Its HTTP client is synchronous, so only its configuration is used; the driver makes its
own calls with aiohttp, asking the loaded configuration for a fresh token on each.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Callable
from dataclasses import dataclass


class ClusterAccessError(ValueError):
    """The pool's kubeconfig, context or in-cluster credentials cannot be used; the message says which."""


@dataclass(frozen=True)
class ClusterAccess:
    server: str  # https://host:port of the API server
    ssl: ssl.SSLContext | None  # None: plain HTTP (a local test server)
    token: Callable[[], str | None]  # the Authorization header's value, refreshed as the loader does


def load_access(kubeconfig: str | None, context: str | None) -> ClusterAccess:
    """Load `context` of the kubeconfig at `kubeconfig`, or the in-cluster service account without a path."""
    try:
        from kubernetes import client, config
    except ImportError as exc:  # the `kubernetes` extra is optional
        raise ClusterAccessError(
            "kubernetes pools need the kubernetes package: pip install 'computenet[kubernetes]'"
        ) from exc
    configuration = client.Configuration()
    where = f"kubeconfig {kubeconfig!r}" + (f", context {context!r}" if context else "")
    try:
        if kubeconfig:
            path = os.path.expanduser(kubeconfig)
            config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=path, context=context, client_configuration=configuration, persist_config=False
            )
        else:
            where = "the in-cluster service account (spec.kubeconfig is empty)"
            config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    except (config.ConfigException, OSError, ValueError, KeyError) as exc:
        raise ClusterAccessError(f"cannot use {where}: {exc}") from exc
    return ClusterAccess(
        server=str(configuration.host).rstrip("/"),
        ssl=_ssl_context(configuration) if str(configuration.host).startswith("https") else None,
        token=lambda: _bearer(configuration),
    )


def _bearer(configuration: object) -> str | None:
    settings = configuration.auth_settings()  # type: ignore[attr-defined]  # calls the refresh hook
    bearer = settings.get("BearerToken")
    return str(bearer["value"]) if bearer and bearer.get("value") else None


def _ssl_context(configuration: object) -> ssl.SSLContext:
    cafile = getattr(configuration, "ssl_ca_cert", None)
    context = ssl.create_default_context(cafile=cafile)
    cert_file, key_file = getattr(configuration, "cert_file", None), getattr(configuration, "key_file", None)
    if cert_file:
        context.load_cert_chain(cert_file, key_file)
    if not getattr(configuration, "verify_ssl", True):  # insecure-skip-tls-verify in the kubeconfig
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context
