"""The data plane: OpenAI-compatible app, routing policies, retries, metrics."""

from .app import Gateway, create_gateway_app
from .proxy import ProxySettings
from .registry import EndpointRegistry

__all__ = ["EndpointRegistry", "Gateway", "ProxySettings", "create_gateway_app"]
