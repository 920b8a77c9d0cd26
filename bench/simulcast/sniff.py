"""When each VP8 keyframe's first packet arrives at a subscriber, and its picture size.

The SFU forwards one SSRC per track whatever the layer, so a subscriber
tells the simulcast layers apart by the keyframes' picture size (the layer
switches only at a keyframe). The load tester's subscribers note a size
when a keyframe is complete (aiortc's receive path) or at its first packet
(header counting, :mod:`media.loadtest.rtpcount`) — and with neither do
they notice a new layer whose keyframe's first packet was dropped until the
next keyframe. :class:`KeyframeTap` sits on the subscriber's transport
(after SRTP, inside the downlink cap: it sees what got through) and notes
*every* keyframe start that arrives, retransmissions on RTX included, so
a first packet lost and then repaired is timed at its repair.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from media.aiortc_compat import negotiated_codecs
from media.loadtest.aiortc_compat import replace_rtp_handler, rtp_handler
from media.loadtest.rtpcount import vp8_keyframe_size


class KeyframeTap:
    """(arrival time, width, height) of every VP8 keyframe start on one transport."""

    def __init__(
        self, vp8: set[int], rtx: set[int], clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._vp8 = vp8
        self._rtx = rtx
        self._clock = clock
        self.seen: list[tuple[float, int, int]] = []

    def observe(self, data: bytes) -> None:
        if len(data) < 12:
            return
        kind = data[1] & 0x7F
        if kind not in self._vp8 and kind not in self._rtx:
            return
        header = 12 + 4 * (data[0] & 0x0F)
        if data[0] & 0x10 and len(data) >= header + 4:  # header extension
            header += 4 + 4 * int.from_bytes(data[header + 2 : header + 4], "big")
        end = len(data) - (data[-1] if data[0] & 0x20 and data[-1] else 0)  # padding
        payload = data[header:end]
        if kind in self._rtx:
            payload = payload[2:]  # the original sequence number (RFC 4588)
        size = vp8_keyframe_size(payload)
        if size is not None:
            self.seen.append((self._clock(), size[0], size[1]))

    def first_after(
        self, since: float, sizes: set[tuple[int, int]]
    ) -> tuple[float, tuple[int, int]] | None:
        """When the first keyframe of one of ``sizes`` started arriving at or after
        ``since``, and which size it was."""
        for at, width, height in self.seen:
            if at >= since and (width, height) in sizes:
                return at, (width, height)
        return None

    def size_before(self, when: float) -> tuple[int, int] | None:
        """The size of the last keyframe that arrived before ``when``."""
        last = None
        for at, width, height in self.seen:
            if at >= when:
                break
            last = (width, height)
        return last


def tap_subscriber(subscribe_pc: Any) -> tuple[KeyframeTap, Any]:
    """Install a :class:`KeyframeTap` on a subscribe connection's (bundled) transport;
    returns it and the transport.

    Call it once the video track arrived (its codecs are negotiated, and the
    header counter, if any, has taken the transport) and before installing a
    downlink cap, so that the cap sits in front of it.
    """
    vp8: set[int] = set()
    rtx: set[int] = set()
    transport = None
    for transceiver in subscribe_pc.getTransceivers():
        if transceiver.kind != "video" or transceiver.receiver.transport is None:
            continue
        transport = transceiver.receiver.transport
        for codec in negotiated_codecs(transceiver):
            mime = str(codec.mimeType).lower()
            if mime == "video/vp8":
                vp8.add(int(codec.payloadType))
            elif mime == "video/rtx":
                rtx.add(int(codec.payloadType))
    if transport is None or not vp8:
        raise RuntimeError("the subscribe connection receives no VP8 video yet")
    tap = KeyframeTap(vp8, rtx)
    inner = rtp_handler(transport)

    async def handle(data: bytes, arrival_time_ms: int) -> None:
        tap.observe(data)
        await inner(data, arrival_time_ms)

    replace_rtp_handler(transport, handle)
    return tap, transport
