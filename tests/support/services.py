"""Real Postgres and Redis for tests: a fresh schema per test, unique key prefixes.

Under CI=true an unreachable service fails the test instead of skipping it, so a
broken CI machine can never pass by running fewer tests.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import NoReturn

import asyncpg
import pytest

POSTGRES_URL = os.environ.get(
    "HUDDLE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("HUDDLE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def unreachable(what: str, error: BaseException) -> NoReturn:
    message = f"{what} is unreachable: {error!r}"
    if os.environ.get("CI") == "true":
        pytest.fail(message + " (CI=true: tests that need it must run)")
    pytest.skip(message)


@asynccontextmanager
async def postgres_schema(base_url: str = POSTGRES_URL) -> AsyncIterator[str]:
    """Yield a Postgres URL whose search_path is a brand-new schema; drop it after."""
    schema = f"huddle_test_{uuid.uuid4().hex[:12]}"
    try:
        admin = await asyncpg.connect(base_url, timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        unreachable("Postgres", exc)
    try:
        await admin.execute(f'CREATE SCHEMA "{schema}"')
        separator = "&" if "?" in base_url else "?"
        yield f"{base_url}{separator}search_path={schema}"
    finally:
        await admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await admin.close()
