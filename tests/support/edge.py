"""Real servers for edge tests: the app behind the production edge in process,
or the settings of a whole ``huddle serve`` subprocess, and a raw-socket HTTP client."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from server.app import create_app
from server.config import HttpSettings
from server.http.edge import EdgeAppRunner
from tests.conftest import TEST_SECRET, make_config


@dataclass(frozen=True)
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def parse_response(data: bytes) -> RawResponse:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return RawResponse(status, headers, body)


async def read_all(reader: asyncio.StreamReader, timeout: float = 10.0) -> bytes:
    """Everything the server sends until it closes the connection."""
    chunks: list[bytes] = []
    async with asyncio.timeout(timeout):
        while chunk := await reader.read(65536):
            chunks.append(chunk)
    return b"".join(chunks)


async def raw_request(port: int, data: bytes, *, timeout: float = 10.0) -> RawResponse:
    """Send ``data`` as is, read until the server closes, parse the response."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        return parse_response(await read_all(reader, timeout))
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


@contextlib.asynccontextmanager
async def edge_server(tmp_path: Path, settings: HttpSettings | None = None) -> AsyncIterator[Any]:
    """The app on 127.0.0.1 through EdgeAppRunner, as ``huddle serve`` runs it.
    Yields ``(EdgeServer, port)``."""
    config = dataclasses.replace(
        make_config(f"sqlite:///{tmp_path}/edge.db"), http=settings or HttpSettings()
    )
    runner = EdgeAppRunner(create_app(config), settings=config.http, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        server = runner.server
        assert server is not None
        yield server, int(runner.addresses[0][1])
    finally:
        await runner.cleanup()


def serve_settings(tmp_path: Path) -> dict[str, str]:
    """``HUDDLE_*`` settings of a dev-mode ``huddle serve`` for the edge tests
    (run with :func:`tests.support.serve.huddle_serve`)."""
    return {
        "HUDDLE_DATABASE_URL": f"sqlite:///{tmp_path}/serve.db",
        "HUDDLE_JWT_SECRET": TEST_SECRET,
        "HUDDLE_DEV": "1",
        "HUDDLE_ICE_HOSTS": "127.0.0.1",
        "HUDDLE_LOG_LEVEL": "WARNING",
    }
