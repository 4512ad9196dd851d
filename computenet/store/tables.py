"""Table definitions. Spec and status live in separate columns so that a status write
never rewrites what a user declared, and a spec write never loses observed status.

Times of keys and usage are unix seconds (floats), as the records in `computenet.api`
carry them; usage also keeps its UTC day so that totals per day group in plain SQL,
the same on SQLite and PostgreSQL.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from sqlalchemy import JSON, Boolean, Date, DateTime, Float, Integer, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Bump with a migration in store/migrations when a table changes shape. A new table
# needs no bump: `create_all` adds it to an existing database and older code ignores it --
# unless older code must not run next to the new: version 2 added leases, endpoints and
# revisions, and a version-1 control plane, which knows no leader election, would
# reconcile next to the elected leader. It refuses a newer schema, so the bump fences it out.
SCHEMA_VERSION = 2


class Base(DeclarativeBase):
    pass


class SchemaRow(Base):
    __tablename__ = "computenet_schema"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version: Mapped[int] = mapped_column(Integer)


class ResourceRow(Base):
    __tablename__ = "resources"

    kind: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    labels: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    annotations: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    # Bumped by every write (spec or status): the optimistic-concurrency token.
    resource_version: Mapped[int] = mapped_column(Integer, default=1)
    # Bumped only when the spec changes: what status.observedGeneration refers to.
    generation: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ApiKeyRow(Base):
    """One API key. Only the SHA-256 of the key text is kept; the text is shown once."""

    __tablename__ = "api_keys"

    key_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(63), index=True)
    secret_sha256: Mapped[str] = mapped_column(String(64))
    models: Mapped[list[str]] = mapped_column(JSON, default=list)
    expires_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    admin: Mapped[bool] = mapped_column(Boolean, default=False)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[float] = mapped_column(Float)
    limits: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class UsageRow(Base):
    """One metered request; `request_id` is the key that makes a retried batch harmless."""

    __tablename__ = "usage"

    request_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    started_at: Mapped[float] = mapped_column(Float, index=True)
    day: Mapped[date] = mapped_column(Date, index=True)  # UTC day of started_at
    tenant: Mapped[str] = mapped_column(String(63))
    key_id: Mapped[str] = mapped_column(String(32))
    model: Mapped[str] = mapped_column(String(256))
    backend: Mapped[str] = mapped_column(String(256))
    endpoint: Mapped[str] = mapped_column(String(512))
    region: Mapped[str] = mapped_column(String(64))
    prompt_tokens: Mapped[int] = mapped_column(Integer)
    cached_tokens: Mapped[int] = mapped_column(Integer)
    completion_tokens: Mapped[int] = mapped_column(Integer)
    cost_usd: Mapped[float] = mapped_column(Float)
    ttft_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    latency_s: Mapped[float] = mapped_column(Float)
    status: Mapped[int] = mapped_column(Integer)
    estimated: Mapped[bool] = mapped_column(Boolean, default=False)


class RevisionRow(Base):
    """A counter per topic (resources, keys, endpoints), bumped in the same transaction as each change.

    Every process polls these few rows to learn of changes other processes made (see
    `changes.py`); the `endpoints` revision is also what the control API's long-poll compares.
    """

    __tablename__ = "revisions"

    topic: Mapped[str] = mapped_column(String(32), primary_key=True)
    revision: Mapped[int] = mapped_column(Integer, default=0)


class LeaseRow(Base):
    """A lease, as Kubernetes' Lease object: who holds it, since when, and until when unless renewed.

    Times are unix seconds read from the database's clock, never a replica's, so that replicas
    whose clocks disagree still agree on when a lease expired. `version` is the
    compare-and-swap token: a write succeeds only if nobody wrote since it was read.
    """

    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    holder: Mapped[str] = mapped_column(String(253))  # "" once released
    acquired_at: Mapped[float] = mapped_column(Float)
    renewed_at: Mapped[float] = mapped_column(Float)
    duration_s: Mapped[float] = mapped_column(Float)
    transitions: Mapped[int] = mapped_column(Integer, default=0)  # times it changed hands
    version: Mapped[int] = mapped_column(Integer, default=1)


class EndpointRow(Base):
    """One deployment's ready endpoints as the leader's reconciler last published them."""

    __tablename__ = "endpoints"

    deployment: Mapped[str] = mapped_column(String(63), primary_key=True)
    model: Mapped[str] = mapped_column(String(256))
    policy: Mapped[Any] = mapped_column(JSON)  # a preset name, or a pipeline (PolicySpec's wire form)
    endpoints: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    updated_at: Mapped[float] = mapped_column(Float)
