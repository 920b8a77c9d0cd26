"""A client that falls behind is dropped, without a network in the way."""

from __future__ import annotations

import asyncio
from typing import Any

from signaling.connection import Connection
from signaling.protocol import CloseCode
from tests.support.polling import eventually


class StuckSocket:
    """A WebSocket whose peer never reads: every send blocks."""

    def __init__(self) -> None:
        self.closed_with: int | None = None

    async def send_str(self, data: str) -> None:
        await asyncio.Event().wait()

    async def close(self, *, code: int, message: bytes) -> None:
        self.closed_with = code


class FakeTransport:
    def __init__(self) -> None:
        self.aborted = False

    def abort(self) -> None:
        self.aborted = True


class FakeRequest:
    def __init__(self) -> None:
        self.transport = FakeTransport()


def make_connection(*, write_timeout_s: float = 30.0) -> tuple[Connection, Any, Any]:
    ws, request = StuckSocket(), FakeRequest()
    conn = Connection(
        ws,  # type: ignore[arg-type]
        request,  # type: ignore[arg-type]
        call_id="c",
        participant_id="p",
        name=None,
        queue_size=4,
        ping_after_s=60,
        drop_after_s=120,
        write_timeout_s=write_timeout_s,
    )
    return conn, ws, request


async def test_full_send_queue_drops_the_client() -> None:
    conn, _, _ = make_connection()
    conn.start()
    try:
        results = [conn.send_text(f"m{i}") for i in range(10)]
        assert results[:4] == [True] * 4
        assert False in results
        assert conn.close_code == CloseCode.TOO_SLOW
        assert not conn.send_text("late")
    finally:
        await conn.stop()


async def test_write_timeout_aborts_the_socket() -> None:
    conn, _, request = make_connection(write_timeout_s=0.05)
    conn.start()
    try:
        assert conn.send_text("first")

        async def aborted() -> bool:
            return bool(request.transport.aborted)

        await eventually(aborted, timeout=5, interval=0.01)
        assert conn.close_code == CloseCode.TOO_SLOW
    finally:
        await conn.stop()
