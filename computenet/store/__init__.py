"""Persistence of resources and their status (SQLAlchemy; SQLite embedded, PostgreSQL distributed)."""

from .errors import Conflict, NotFound, SchemaTooNew
from .resources import ApplyAction, ResourceStore, sqlite_url

__all__ = ["ApplyAction", "Conflict", "NotFound", "ResourceStore", "SchemaTooNew", "sqlite_url"]
