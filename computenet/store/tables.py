"""Table definitions. Spec and status live in separate columns so that a status write
never rewrites what a user declared, and a spec write never loses observed status."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, DateTime, Integer, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Bump with a migration in store/migrations when a table changes shape.
SCHEMA_VERSION = 1


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
