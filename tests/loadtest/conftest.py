"""A real ``huddle serve`` process for the load tester to load."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def huddle_server(tmp_path: Path) -> AsyncIterator[str]:
    """Base URL of a fresh server on 127.0.0.1 (SQLite, ICE on loopback)."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUDDLE_")}
    env.update(
        HUDDLE_PORT=str(port),
        HUDDLE_HOST="127.0.0.1",
        HUDDLE_DATABASE_URL=f"sqlite:///{tmp_path / 'huddle.db'}",
        HUDDLE_ICE_HOSTS="127.0.0.1",
        HUDDLE_INITIATE_PER_MINUTE="100000",
        HUDDLE_LOG_LEVEL="WARNING",
    )
    log = (tmp_path / "server.log").open("wb")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "server.cli", "serve", env=env, cwd=ROOT, stdout=log, stderr=log
    )
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(300):  # 30 s
                if process.returncode is not None:
                    break
                try:
                    async with session.get(f"{base}/health") as response:
                        if response.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("the server did not become healthy in 30 s")
        if process.returncode is not None:
            raise AssertionError((tmp_path / "server.log").read_text())
        yield base
    finally:
        if process.returncode is None:
            process.terminate()  # SIGTERM: a graceful shutdown
            try:
                await asyncio.wait_for(process.wait(), timeout=20)
            except TimeoutError:
                process.kill()
                await process.wait()
        log.close()
