"""Persistence: :func:`create_store` picks the backend from the database URL."""

from __future__ import annotations

from server.store.base import Store, StoreTimeout, StoreUnavailable
from server.store.sql import DbMetrics, SqlStore

__all__ = ["SqlStore", "Store", "StoreTimeout", "StoreUnavailable", "create_store"]


def create_store(database_url: str, *, timeout_s: float, metrics: DbMetrics) -> SqlStore:
    if database_url.startswith(("postgresql://", "postgres://")):
        from server.store.postgres import PostgresBackend

        return SqlStore(
            PostgresBackend(database_url, connect_timeout_s=timeout_s, release_timeout_s=timeout_s),
            timeout_s=timeout_s,
            metrics=metrics,
        )
    from server.store.sqlite import SqliteBackend

    return SqlStore(SqliteBackend(database_url), timeout_s=timeout_s, metrics=metrics)
