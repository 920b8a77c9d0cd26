"""Transport-wide congestion control feedback from a load-test subscriber, as Chrome sends it.

aiortc has no transport-wide congestion control (aiortc #676): its answer
drops the ``transport-cc`` the SFU offers, so the SFU would fall back to the
subscriber's REMB and receiver reports. A real receiver (Chrome) answers it
and reports, every ~50 ms, which transport-wide sequence numbers arrived and
when; the SFU's send-side estimate (:mod:`media.transportcc`,
:mod:`media.gcc`) runs on that. This module makes the load tester's
subscriber do the same:

- :func:`accept_in_answer`: take the offered extension and the ``transport-cc``
  RTCP feedback into the subscriber's answer
  (:func:`media.aiortc_compat.accept_transport_cc`, the SFU's own helper
  for publish connections);
- :class:`TransportFeedback`: on the subscribe connection's DTLS transport,
  after SRTP and after the receive cap (:mod:`media.loadtest.netcap`, so a
  capped link's queueing delay and drops are in the arrival times), read the
  transport-wide sequence number of every RTP packet (media, RTX, padding
  probes), record its arrival in a :class:`media.twcc.TwccRecorder` and send
  its feedback packets (RTPFB FMT 15) every :data:`INTERVAL`. Packets the
  cap dropped are reported as not received.
- :class:`ArrivalStamps`: when each RTP datagram reached the socket, as
  Chrome stamps arrivals on its network thread. Stamped later (where the
  packet is handled, after aioice's queue, the DTLS transport's task and
  SRTP), a busy load generator's own backlog would read as a queue on the
  link, and the SFU's delay-based estimate would fall for an uncapped
  subscriber. The cap adds the wait in its queue to a packet's stamp.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import time
from collections.abc import Callable
from typing import Any

from media.aiortc_compat import accept_transport_cc
from media.rtpheader import URI_TRANSPORT_CC, MalformedPacket, parse_rtp
from media.twcc import TwccRecorder

from .aiortc_compat import on_datagram, replace_rtp_handler, rtp_handler, send_rtp

logger = logging.getLogger(__name__)

#: How often feedback is sent (s), as Chrome does at these rates (50-100 ms).
INTERVAL = 0.05
_EXTMAP = re.compile(r"^a=extmap:(\d+)(?:/\w+)? (\S+)", re.MULTILINE)


def accept_in_answer(pc: Any) -> list[str]:
    """Answer the SFU's offered ``transport-cc`` (call between ``setRemoteDescription``
    of its offer and ``createAnswer``); returns the mids where it was taken."""
    return accept_transport_cc(pc, URI_TRANSPORT_CC)


def extension_id(sdp: str) -> int | None:
    """The id ``sdp`` gives the transport-wide sequence number extension, if any."""
    for match in _EXTMAP.finditer(sdp):
        if match.group(2) == URI_TRANSPORT_CC:
            return int(match.group(1))
    return None


def transport_sequence_number(data: bytes, ext_id: int) -> int | None:
    """The transport-wide sequence number an (unprotected) RTP packet carries, if any."""
    try:
        packet = parse_rtp(data)
    except MalformedPacket:
        return None
    value = packet.extensions.get(ext_id) if packet.extensions is not None else None
    if value is None or len(value) != 2:
        return None
    return (value[0] << 8) | value[1]


def _now_us() -> int:
    return time.monotonic_ns() // 1000


class ArrivalStamps:
    """Socket arrival times (µs, monotonic) of RTP datagrams, by their cleartext
    SSRC and sequence number (SRTP leaves the RTP header readable), bounded."""

    #: Stamps kept at most (a few seconds of a subscriber's packets).
    MAX = 4096

    def __init__(self, clock_us: Callable[[], int] = _now_us) -> None:
        self._clock_us = clock_us
        self._at: dict[bytes, int] = {}

    def install(self, pc: Any) -> bool:
        """Stamp what arrives on ``pc``'s sockets (call after ICE gathered; idempotent)."""
        return on_datagram(pc, self.note) > 0

    def note(self, data: bytes) -> None:
        """A datagram arrived now: stamp it if it is SRTP (not SRTCP, STUN or DTLS)."""
        if len(data) < 12 or not 127 < data[0] < 192 or 192 <= data[1] <= 223:
            return
        at = self._at
        if len(at) >= self.MAX:
            del at[next(iter(at))]  # the oldest
        at[data[2:4] + data[8:12]] = self._clock_us()

    def take(self, data: bytes) -> int | None:
        """The stamp of an (unprotected) RTP packet, forgotten; None if it has none."""
        return self._at.pop(data[2:4] + data[8:12], None)

    def peek(self, data: bytes) -> int | None:
        return self._at.get(data[2:4] + data[8:12])

    def shift(self, data: bytes, delay_us: int) -> None:
        """The packet waited ``delay_us`` more before the receiver got it (a queue)."""
        key = data[2:4] + data[8:12]
        if key in self._at:
            self._at[key] += delay_us


class TransportFeedback:
    """Records what arrives on one DTLS transport and sends its transport-wide feedback."""

    def __init__(
        self,
        name: str,
        transport: Any,
        ext_id: int,
        *,
        sender_ssrc: int | None = None,
        stamps: ArrivalStamps | None = None,
        interval: float = INTERVAL,
        clock_us: Callable[[], int] = _now_us,
    ) -> None:
        self.name = name
        self.transport = transport
        self.ext_id = ext_id
        self.sender_ssrc = sender_ssrc if sender_ssrc is not None else random.getrandbits(32)
        self._interval = interval
        self._clock_us = clock_us
        self.stamps = stamps
        self._recorder = TwccRecorder()
        self._media_ssrc = 0
        self._task: asyncio.Task[None] | None = None
        self.recorded = 0
        self.feedbacks_sent = 0
        self._inner = rtp_handler(transport)
        replace_rtp_handler(transport, self._handle)

    def __repr__(self) -> str:
        return f"TransportFeedback({self.name})"

    async def _handle(self, data: bytes, arrival_time_ms: int) -> None:
        self.record(data)
        await self._inner(data, arrival_time_ms)

    def record(self, data: bytes) -> None:
        """One RTP packet reached the subscriber now."""
        seq = transport_sequence_number(data, self.ext_id)
        if seq is None:
            return
        if not self._media_ssrc:
            self._media_ssrc = int.from_bytes(data[8:12], "big")
        stamp = self.stamps.take(data) if self.stamps is not None else None
        self._recorder.record(seq, self._clock_us() if stamp is None else stamp)
        self.recorded += 1

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._loop(), name=f"twcc {self.name}"
            )

    def take_feedback(self) -> list[bytes]:
        """Every feedback packet due now (what the loop sends)."""
        packets = []
        recorder = self._recorder
        while recorder.pending:
            packet = recorder.feedback(self.sender_ssrc, self._media_ssrc)
            if packet is None:
                break
            packets.append(packet)
        return packets

    async def _loop(self) -> None:
        try:
            while True:
                await asyncio.sleep(self._interval)
                try:
                    packets = self.take_feedback()
                except Exception:  # a bug must not end feedback for good
                    logger.exception("%r: building feedback failed", self)
                    self._recorder = TwccRecorder()
                    continue
                for packet in packets:
                    try:
                        await send_rtp(self.transport, packet)
                    except ConnectionError:
                        break
                    self.feedbacks_sent += 1
        except asyncio.CancelledError:
            pass

    async def close(self) -> None:
        """Stop sending feedback (idempotent)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
