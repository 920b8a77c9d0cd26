"""One participant's signaling WebSocket: a bounded send queue, one writer task.

The request handler reads (:mod:`signaling.handler`); :class:`Connection` owns
the writer task, which also keeps the heartbeat: after ``ping_after_s`` of
silence from the client it sends ``ping``, after ``drop_after_s`` it closes.
A client whose queue fills up (the TCP connection is aborted at once, no close
frame: it would not be read), or whose socket takes longer than the write
timeout, is dropped rather than allowed to slow anyone else.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from dataclasses import dataclass

from aiohttp import web

from signaling.protocol import SERVER_ID, CloseCode, encode, stamp

logger = logging.getLogger(__name__)

_ids = itertools.count(1)


@dataclass(frozen=True)
class _Close:
    code: int
    reason: str


class TokenBucket:
    """``rate`` tokens per second, up to ``burst``; ``take`` says whether one was left."""

    def __init__(self, rate: float, burst: float) -> None:
        self._rate = rate
        self._burst = burst
        self._tokens = burst
        self._stamp = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self._tokens = min(self._burst, self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False


class Connection:
    def __init__(
        self,
        ws: web.WebSocketResponse,
        request: web.Request,
        *,
        call_id: str,
        participant_id: str,
        name: str | None,
        queue_size: int,
        ping_after_s: float,
        drop_after_s: float,
        write_timeout_s: float,
    ) -> None:
        self.id = next(_ids)
        self.ws = ws
        self.call_id = call_id
        self.participant_id = participant_id
        self.name = name
        self._request = request
        self._queue: asyncio.Queue[str | _Close] = asyncio.Queue(maxsize=queue_size)
        self._ping_after_s = ping_after_s
        self._drop_after_s = drop_after_s
        self._write_timeout_s = write_timeout_s
        self._last_heard = time.monotonic()
        self._pinged = False
        self._writer: asyncio.Task[None] | None = None
        #: Why the server closed the socket (None: the client did, or the network).
        self.close_code: int | None = None

    def __repr__(self) -> str:
        return f"Connection({self.id}, Call({self.call_id}) Participant({self.participant_id}))"

    @property
    def closing(self) -> bool:
        return self.close_code is not None

    def start(self) -> None:
        self._writer = asyncio.create_task(self._write_loop(), name=f"signaling:writer:{self.id}")

    def heard(self) -> None:
        """The client sent something: it is alive."""
        self._last_heard = time.monotonic()
        self._pinged = False

    def send_text(self, text: str) -> bool:
        """Queue an encoded message; a full queue drops the client. False if not queued."""
        if self.closing:
            return False
        try:
            self._queue.put_nowait(text)
        except asyncio.QueueFull:
            logger.warning("%r fell behind (send queue full): dropping it", self)
            self.close(CloseCode.TOO_SLOW, "too slow", flush=False)
            # The writer is stuck behind a client that does not read: a close
            # frame would wait for the write timeout. Cut the connection now.
            self._abort()
            return False
        return True

    def close(self, code: int, reason: str, *, flush: bool = True) -> None:
        """Close soon: after what is queued (``flush``) or at once. Idempotent."""
        if self.closing:
            return
        self.close_code = code
        if not flush or self._queue.full():
            while not self._queue.empty():
                self._queue.get_nowait()
        self._queue.put_nowait(_Close(code, reason))

    async def stop(self) -> None:
        """Cancel and await the writer (the reader has ended)."""
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)

    async def _write_loop(self) -> None:
        ws = self.ws
        try:
            while True:
                item = await self._next_item()
                if item is None:
                    continue
                if isinstance(item, _Close):
                    await ws.close(code=item.code, message=item.reason.encode())
                    return
                async with asyncio.timeout(self._write_timeout_s):
                    await ws.send_str(item)
        except asyncio.CancelledError:
            raise
        except TimeoutError:
            logger.warning("%r: write timed out, dropping it", self)
            self.close_code = self.close_code or CloseCode.TOO_SLOW
            self._abort()
        except (ConnectionError, RuntimeError) as exc:
            # The peer went away mid-write; the reader sees the close.
            logger.debug("%r: write failed: %s", self, exc)
        except Exception:
            logger.exception("%r: writer failed", self)
            self._abort()

    async def _next_item(self) -> str | _Close | None:
        """The next queued item, or None after doing heartbeat work on a quiet socket."""
        now = time.monotonic()
        silent = now - self._last_heard
        if silent >= self._drop_after_s:
            logger.info("%r: silent for %.1f s, dropping it", self, silent)
            self.close_code = self.close_code or CloseCode.HEARTBEAT_TIMEOUT
            return _Close(CloseCode.HEARTBEAT_TIMEOUT, "heartbeat timeout")
        if silent >= self._ping_after_s and not self._pinged:
            self._pinged = True
            ping = stamp({"type": "ping"}, sender_id=SERVER_ID, call_id=self.call_id)
            return encode(ping)
        if not self._queue.empty():
            return self._queue.get_nowait()  # busy socket: no timer, no task
        deadline = self._last_heard + (self._drop_after_s if self._pinged else self._ping_after_s)
        try:
            # asyncio.timeout, not wait_for: wait_for makes a task per call (3.11).
            async with asyncio.timeout(max(0.0, deadline - now)):
                return await self._queue.get()
        except TimeoutError:
            return None

    def _abort(self) -> None:
        transport = self._request.transport
        if transport is not None:
            transport.abort()
