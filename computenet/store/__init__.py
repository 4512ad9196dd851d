"""Persistence of resources and their status, API keys and usage records
(SQLAlchemy; SQLite embedded, PostgreSQL distributed)."""

from .endpoints import EndpointSnapshot, EndpointStore
from .errors import Conflict, NotFound, SchemaTooNew
from .keys import KeyStore
from .leases import Lease, LeaseReading, LeaseStore
from .resources import ApplyAction, ResourceStore, sqlite_url
from .usage import SpendScope, UsageStore, UsageTotal

__all__ = [
    "ApplyAction",
    "Conflict",
    "EndpointSnapshot",
    "EndpointStore",
    "KeyStore",
    "Lease",
    "LeaseReading",
    "LeaseStore",
    "NotFound",
    "ResourceStore",
    "SchemaTooNew",
    "SpendScope",
    "UsageStore",
    "UsageTotal",
    "sqlite_url",
]
