"""A receive-bitrate cap for load-test subscribers: a token-bucket policer on arriving RTP.

Like a constrained downlink (``tc``'s token bucket with a small burst), it
drops the RTP packets that arrive faster than the cap once the bucket is
empty; RTCP passes untouched. It sits on the subscriber's DTLS transport,
after SRTP (:func:`install_receive_cap` wraps whatever handles unprotected
RTP there: aiortc's router or :class:`media.loadtest.rtpcount.RtpCounter`),
so what it drops is reported by the receiver as loss, as a real bottleneck's
drops would be. It only measures what the SFU does about a slow subscriber:
until the SFU estimates each subscriber's bandwidth (issue #13 items 3-4) it
keeps sending the top layer, and the capped subscriber sees loss and freezes.

A cap can be lifted and set again while packets flow
(:meth:`ReceiveCap.set_bitrate`), as a benchmark drops a downlink's
bandwidth at a known moment (``bench/simulcast``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from .aiortc_compat import replace_rtp_handler, rtp_handler

#: Bytes a packet costs on the wire beyond its RTP bytes: IPv4 + UDP headers, SRTP tag.
WIRE_OVERHEAD = 20 + 8 + 10
#: The bucket holds this much of the rate (and at least a few full packets).
BURST_SECONDS = 0.1


class ReceiveCap:
    """Token bucket: ``bitrate`` bits per second, ``burst_s`` seconds of depth."""

    def __init__(
        self,
        bitrate: int,
        *,
        burst_s: float = BURST_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._burst_s = burst_s
        self._clock = clock
        self.passed = 0
        self.dropped = 0
        self.dropped_bytes = 0
        self.set_bitrate(bitrate)

    def set_bitrate(self, bitrate: int | None) -> None:
        """Police at ``bitrate`` from now on, starting from a full bucket (as a
        link whose bandwidth just changed); None lifts the cap: everything passes."""
        if bitrate is not None and bitrate <= 0:
            raise ValueError("a receive cap must be a positive bitrate")
        self.bitrate = bitrate
        rate = (bitrate or 0) / 8
        self._rate = rate
        self._depth = max(4 * 1500.0, rate * self._burst_s)
        self._tokens = self._depth
        self._at = self._clock()

    def admit(self, nbytes: int) -> bool:
        """Whether a packet of ``nbytes`` (RTP bytes) gets through now."""
        if self.bitrate is None:
            self.passed += 1
            return True
        now = self._clock()
        self._tokens = min(self._depth, self._tokens + (now - self._at) * self._rate)
        self._at = now
        cost = nbytes + WIRE_OVERHEAD
        if self._tokens >= cost:
            self._tokens -= cost
            self.passed += 1
            return True
        self.dropped += 1
        self.dropped_bytes += cost
        return False


def install_receive_cap(transport: Any, cap: ReceiveCap) -> None:
    """Police the RTP arriving on ``transport`` (an ``RTCDtlsTransport``) with ``cap``.

    Install after anything else that replaces the transport's RTP handler.
    """
    inner = rtp_handler(transport)

    async def handle(data: bytes, arrival_time_ms: int) -> None:
        if cap.admit(len(data)):
            await inner(data, arrival_time_ms)

    replace_rtp_handler(transport, handle)
