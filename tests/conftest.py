"""Fixtures shared by the whole suite: configs, apps and both store backends."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from media.aiortc_compat import restrict_host_addresses
from media.loadtest.preencoded import EncodedClip, opus_clip, vp8_clip
from server.app import create_app
from server.config import Config, Limits
from tests.support.services import postgres_schema

TEST_SECRET = "test-secret-that-is-long-enough-for-hs256"


class FakeClock:
    """A clock tests move by hand, so timeouts are tested without waiting."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def make_config(database_url: str, **limits: Any) -> Config:
    return Config(
        port=0,
        database_url=database_url,
        jwt_secret=TEST_SECRET,
        dev_mode=True,
        limits=dataclasses.replace(Limits(sweep_interval_s=0.05), **limits),
    )


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=["sqlite", "postgres"])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """Each test using this runs once per store backend."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/huddle.db"
        return
    async with postgres_schema() as url:
        yield url


AppFactory = Callable[..., Awaitable[TestClient[Any, Any]]]


@pytest.fixture
async def make_client(database_url: str, clock: FakeClock) -> AsyncIterator[AppFactory]:
    """Start the real app (TestServer on 127.0.0.1) with limits overridden per test."""
    clients: list[TestClient[Any, Any]] = []

    async def factory(*, config: Config | None = None, **limits: Any) -> TestClient[Any, Any]:
        app = create_app(config or make_config(database_url, **limits), clock=clock)
        client = TestClient(TestServer(app, host="127.0.0.1"))
        await client.start_server()
        clients.append(client)
        return client

    yield factory
    for client in reversed(clients):
        await client.close()


@pytest.fixture(scope="module")
def clips() -> tuple[EncodedClip, EncodedClip]:
    """A short VP8 clip (320x240, 300 kbit/s) and Opus, for real peers (SignaledPeer)."""
    return (
        vp8_clip(frames=60, width=320, height=240, bitrate=300_000, keyframe_every=30),
        opus_clip(),
    )


@pytest.fixture
def restricted_ice() -> Iterator[None]:
    """ICE for the peers in this process: loopback only."""
    restrict_host_addresses(["127.0.0.1"])
    yield
    restrict_host_addresses([])
