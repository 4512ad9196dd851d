"""The data plane: OpenAI-compatible gateway, routes and fallbacks, keys, limits, metering."""

from .app import Gateway, GatewayApp
from .registry import EndpointRegistry
from .routes import ConfigError, ConfigProblem

__all__ = ["ConfigError", "ConfigProblem", "EndpointRegistry", "Gateway", "GatewayApp"]
