"""A real ``huddle serve`` process for the load tester to load."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.support.serve import spawn_serve


@pytest.fixture
async def huddle_server(tmp_path: Path) -> AsyncIterator[str]:
    """Base URL of a fresh server on 127.0.0.1 (SQLite, ICE on loopback)."""
    server = spawn_serve(
        tmp_path,
        name="server",
        HUDDLE_DATABASE_URL=f"sqlite:///{tmp_path / 'huddle.db'}",
        HUDDLE_ICE_HOSTS="127.0.0.1",
        HUDDLE_INITIATE_PER_MINUTE="100000",
        HUDDLE_LOG_LEVEL="WARNING",
    )
    try:
        await asyncio.to_thread(server.wait_healthy)
        yield server.base_url
    finally:
        await asyncio.to_thread(server.stop, 20)
