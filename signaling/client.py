"""A small asyncio client for Huddle signaling (tests, load tester, Python programs).

::

    async with SignalingClient.connect(base_url, call_id, token) as client:
        await client.send({"type": "offer", "target_id": peer, "sdp": sdp})
        answer = await client.receive(type="answer", timeout=5)

A reader task keeps every message in arrival order; :meth:`receive` takes the
first one that matches, leaving the others for later calls. Server ``ping`` is
answered with ``pong`` unless ``auto_pong=False`` (to test the heartbeat).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp

Message = dict[str, Any]
Predicate = Callable[[Message], bool]

PATH = "/v1/calls/ws/signaling"


class SignalingRejected(Exception):
    """The server refused the upgrade (HTTP status before the WebSocket opened)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status


class SignalingClosed(Exception):
    """The socket closed while waiting for a message."""

    def __init__(self, code: int | None) -> None:
        super().__init__(f"signaling socket closed (code {code})")
        self.code = code


class SignalingClient:
    def __init__(
        self,
        ws: aiohttp.ClientWebSocketResponse,
        session: aiohttp.ClientSession,
        *,
        owns_session: bool,
        auto_pong: bool = True,
    ) -> None:
        self.ws = ws
        self.auto_pong = auto_pong
        self._session = session
        self._owns_session = owns_session
        self._inbox: list[Message] = []
        self._arrived = asyncio.Condition()
        self._closed = asyncio.Event()
        self.close_code: int | None = None
        self._reader = asyncio.create_task(self._read(), name="signaling-client:reader")

    @classmethod
    async def open(
        cls,
        base_url: str,
        call_id: str,
        token: str,
        *,
        session: aiohttp.ClientSession | None = None,
        token_in_query: bool = False,
        origin: str | None = None,
        auto_pong: bool = True,
        timeout: float = 10.0,  # noqa: ASYNC109 - handshake and close timeout
    ) -> SignalingClient:
        """Connect; raises :class:`SignalingRejected` if the server refuses."""
        owns = session is None
        http = session or aiohttp.ClientSession()
        params = {"call_id": call_id}
        headers: dict[str, str] = {}
        if token_in_query:
            params["access_token"] = token
        else:
            headers["Authorization"] = f"Bearer {token}"
        if origin is not None:
            headers["Origin"] = origin
        try:
            ws = await http.ws_connect(
                base_url.rstrip("/") + PATH,
                params=params,
                headers=headers,
                autoping=True,
                timeout=aiohttp.ClientWSTimeout(ws_close=timeout),
                max_msg_size=0,
            )
        except aiohttp.WSServerHandshakeError as exc:
            if owns:
                await http.close()
            raise SignalingRejected(exc.status, exc.message) from None
        except BaseException:
            if owns:
                await http.close()
            raise
        return cls(ws, http, owns_session=owns, auto_pong=auto_pong)

    @classmethod
    @asynccontextmanager
    async def connect(
        cls, base_url: str, call_id: str, token: str, **options: Any
    ) -> AsyncIterator[SignalingClient]:
        client = await cls.open(base_url, call_id, token, **options)
        try:
            yield client
        finally:
            await client.close()

    # -- sending -----------------------------------------------------------------------

    async def send(self, message: Message) -> None:
        await self.ws.send_str(json.dumps(message))

    async def send_raw(self, data: str | bytes) -> None:
        """Send a frame as is (tests of bad input)."""
        if isinstance(data, bytes):
            await self.ws.send_bytes(data)
        else:
            await self.ws.send_str(data)

    # -- receiving ---------------------------------------------------------------------

    @property
    def messages(self) -> list[Message]:
        """Messages received and not yet taken by :meth:`receive`."""
        return list(self._inbox)

    async def receive(
        self,
        type: str | None = None,
        *,
        timeout: float = 5.0,  # noqa: ASYNC109 - the documented API
        where: Predicate | None = None,
    ) -> Message:
        """The first pending message of ``type`` (any type if None) satisfying ``where``.

        Raises :class:`TimeoutError`, or :class:`SignalingClosed` once the socket
        closed and nothing matching is left."""

        def match(message: Message) -> bool:
            return (type is None or message.get("type") == type) and (
                where is None or where(message)
            )

        async with asyncio.timeout(timeout), self._arrived:
            while True:
                for index, message in enumerate(self._inbox):
                    if match(message):
                        return self._inbox.pop(index)
                if self._closed.is_set():
                    raise SignalingClosed(self.close_code)
                await self._arrived.wait()

    async def wait_closed(self, timeout: float = 5.0) -> int | None:  # noqa: ASYNC109
        """Wait for the server to close the socket; returns the close code."""
        async with asyncio.timeout(timeout):
            await self._closed.wait()
        return self.close_code

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    async def close(self) -> None:
        """Close the socket (idempotent) and, if this client opened it, the session."""
        with contextlib.suppress(Exception):
            await self.ws.close()
        await asyncio.gather(self._reader, return_exceptions=True)
        if self._owns_session:
            await self._session.close()

    async def _read(self) -> None:
        try:
            async for frame in self.ws:
                if frame.type is not aiohttp.WSMsgType.TEXT:
                    continue
                try:
                    message = json.loads(frame.data)
                except ValueError:
                    continue
                if not isinstance(message, dict):
                    continue
                if message.get("type") == "ping" and self.auto_pong:
                    with contextlib.suppress(ConnectionError, RuntimeError):
                        await self.ws.send_str('{"type":"pong"}')
                async with self._arrived:
                    self._inbox.append(message)
                    self._arrived.notify_all()
        finally:
            self.close_code = self.ws.close_code
            self._closed.set()
            async with self._arrived:
                self._arrived.notify_all()
