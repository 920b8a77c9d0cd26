"""A receive-bitrate cap for load-test subscribers: a shaper with a bounded queue.

Like a constrained downlink (``tc``'s token bucket filter, ``tbf rate R burst
16kb latency 300ms`` as the browser tests shape with), RTP arriving faster
than the cap waits in a FIFO queue and leaves at the cap's rate, after a
burst of :data:`BURST_BYTES`; a packet that would wait longer than
:data:`QUEUE_SECONDS` is dropped. So a subscriber sent more than its link
carries sees what a real one does: delay that grows, then loss. RTCP passes
untouched. It sits on the subscriber's DTLS transport, after SRTP
(:func:`install_receive_cap` wraps whatever handles unprotected RTP there:
aiortc's router, :class:`media.loadtest.rtpcount.RtpCounter`, and the
subscriber's transport-wide feedback, :mod:`media.loadtest.ccfeedback`), so
the subscriber's receiver reports show the drops as loss and its
transport-wide feedback shows both the queueing delay and the drops, as a
real bottleneck's would.

A cap can be lifted and set again while packets flow
(:meth:`ReceiveCap.set_bitrate`), as a benchmark drops a downlink's
bandwidth at a known moment (``bench/simulcast``).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from .aiortc_compat import replace_rtp_handler, rtp_handler
from .ccfeedback import ArrivalStamps

logger = logging.getLogger(__name__)

#: Bytes a packet costs on the wire beyond its RTP bytes: IPv4 + UDP headers, SRTP tag.
WIRE_OVERHEAD = 20 + 8 + 10
#: The bucket's depth: what passes at once after the link was idle (tbf's ``burst``).
BURST_BYTES = 16 * 1024
#: The longest a packet may wait in the queue; one that would wait longer is
#: dropped (tbf's ``latency``).
QUEUE_SECONDS = 0.3

Handler = Callable[[bytes, int], Awaitable[None]]


class ReceiveCap:
    """A token-bucket shaper: ``bitrate`` bits per second, ``burst_bytes`` deep,
    ``queue_s`` of queue; what it decides per packet is :meth:`delay`."""

    def __init__(
        self,
        bitrate: int | None,
        *,
        burst_bytes: int = BURST_BYTES,
        queue_s: float = QUEUE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._burst = float(burst_bytes)
        self.queue_s = queue_s
        self._clock = clock
        self.passed = 0
        self.dropped = 0
        self.dropped_bytes = 0
        self.delayed = 0  # packets that waited in the queue
        self.max_delay = 0.0  # the longest wait in the queue (s)
        self._paths: list[_ShapedPath] = []
        self.set_bitrate(bitrate)

    def set_bitrate(self, bitrate: int | None) -> None:
        """Shape at ``bitrate`` from now on, starting from a full bucket (as a
        link whose bandwidth just changed); None lifts the cap: everything passes
        (behind what is still queued)."""
        if bitrate is not None and bitrate <= 0:
            raise ValueError("a receive cap must be a positive bitrate")
        self.bitrate = bitrate
        self._rate = (bitrate or 0) / 8  # bytes per second
        now = self._clock()
        self._free_at = now  # when the last packet admitted leaves the queue
        self._tokens = self._burst  # the bucket at _free_at

    def delay(self, nbytes: int, at: float | None = None) -> float | None:
        """How long a packet of ``nbytes`` (RTP bytes) arriving now (or ``at``, on
        the cap's clock) waits before it is delivered (0: at once), or None if the
        queue drops it."""
        now = self._clock() if at is None else at
        if self.bitrate is None:
            self.passed += 1
            return max(0.0, self._free_at - now)
        cost = nbytes + WIRE_OVERHEAD
        start = max(now, self._free_at)  # FIFO: not before the packet ahead of it
        tokens = min(self._burst, self._tokens + (start - self._free_at) * self._rate)
        leave = start if tokens >= cost else start + (cost - tokens) / self._rate
        wait = leave - now
        if wait > self.queue_s + 1e-9:  # (float error must not drop a packet at the limit)
            self.dropped += 1
            self.dropped_bytes += cost
            return None
        self._tokens = max(0.0, tokens + (leave - start) * self._rate - cost)
        self._free_at = leave
        self.passed += 1
        if wait > 0:
            self.delayed += 1
            self.max_delay = max(self.max_delay, wait)
        return wait

    def admit(self, nbytes: int) -> bool:
        """Whether a packet of ``nbytes`` gets through (after its wait, if any)."""
        return self.delay(nbytes) is not None

    def shape(self, inner: Handler, stamps: ArrivalStamps | None = None) -> Handler:
        """A handler of unprotected RTP that hands ``inner`` what passes, when it passes."""
        path = _ShapedPath(self, inner, stamps)
        self._paths.append(path)
        return path.handle

    async def close(self) -> None:
        """Drop what is queued and stop delivering (idempotent)."""
        paths, self._paths = self._paths, []
        for path in paths:
            await path.close()


class _ShapedPath:
    """One transport's queue: packets delivered to ``inner`` at their time."""

    def __init__(self, cap: ReceiveCap, inner: Handler, stamps: ArrivalStamps | None) -> None:
        self._cap = cap
        self._inner = inner
        self._stamps = stamps
        # (when it leaves, the packet, its arrival as the receiver sees it: ms)
        self._queue: collections.deque[tuple[float, bytes, int]] = collections.deque()
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    async def handle(self, data: bytes, arrival_time_ms: int) -> None:
        if self._closed:
            return
        stamps = self._stamps
        stamp = stamps.peek(data) if stamps is not None else None
        # Decided at the packet's arrival on the socket, where known (see ArrivalStamps).
        arrived = stamp / 1e6 if stamp is not None else None
        wait = self._cap.delay(len(data), arrived)
        if wait is None:
            if stamps is not None:
                stamps.take(data)
            return
        if stamps is not None and wait > 0:
            stamps.shift(data, round(wait * 1e6))
        loop = asyncio.get_running_loop()
        # Still to wait now (the cap's clock is the loop's: monotonic).
        left = wait if arrived is None else arrived + wait - time.monotonic()
        if left <= 0 and not self._queue:
            await self._inner(data, arrival_time_ms)
            return
        self._queue.append((loop.time() + left, data, arrival_time_ms + round(wait * 1000)))
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._deliver(), name="receive cap")

    async def _deliver(self) -> None:
        loop = asyncio.get_running_loop()
        queue = self._queue
        try:
            while queue:
                due, data, arrival_ms = queue[0]
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                queue.popleft()
                await self._inner(data, arrival_ms)
        except asyncio.CancelledError:
            pass
        except Exception:
            logger.exception("receive cap: delivery failed")
            queue.clear()

    async def close(self) -> None:
        self._closed = True
        self._queue.clear()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


def install_receive_cap(
    transport: Any, cap: ReceiveCap, stamps: ArrivalStamps | None = None
) -> None:
    """Shape the RTP arriving on ``transport`` (an ``RTCDtlsTransport``) with ``cap``.

    Install after anything else that replaces or wraps the transport's RTP
    handler (the transport-wide feedback must see packets as they leave the
    queue). ``stamps``: the subscriber's socket arrival times, which the cap
    decides by and adds each packet's wait to. :meth:`ReceiveCap.close` stops it.
    """
    replace_rtp_handler(transport, cap.shape(rtp_handler(transport), stamps))
