"""The load-test subscriber's transport-wide feedback: what it reads and what it reports."""

from __future__ import annotations

import itertools
import struct

from aiortc import RTCCertificate, RTCDtlsTransport, RTCIceGatherer, RTCIceTransport

from media.loadtest.ccfeedback import TransportFeedback, extension_id, transport_sequence_number
from media.rtpheader import URI_TRANSPORT_CC
from media.twcc import parse_feedback

EXT_ID = 5


def rtp(seq: int, twcc: int | None, *, ssrc: int = 0x1234, other: bool = True) -> bytes:
    """An RTP packet with a one-byte header extension block (RFC 8285): a mid
    (id 1) and, if given, the transport-wide sequence number."""
    elements = b"\x10" + b"1" if other else b""
    if twcc is not None:
        elements += bytes([(EXT_ID << 4) | 1]) + struct.pack("!H", twcc)
    elements += bytes(-len(elements) % 4)
    header = struct.pack("!BBHII", 0x90, 96, seq, 1000, ssrc)
    return header + struct.pack("!HH", 0xBEDE, len(elements) // 4) + elements + b"payload"


def test_reads_the_transport_wide_sequence_number() -> None:
    assert transport_sequence_number(rtp(1, 0xABCD), EXT_ID) == 0xABCD
    assert transport_sequence_number(rtp(1, 7, other=False), EXT_ID) == 7
    assert transport_sequence_number(rtp(1, None), EXT_ID) is None
    assert transport_sequence_number(b"\x80\x60\x00", EXT_ID) is None  # malformed


def test_finds_the_offered_extension_id() -> None:
    video = "m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=extmap:1 urn:x\r\n"
    sdp = f"v=0\r\n{video}a=extmap:5 {URI_TRANSPORT_CC}\r\n"
    assert extension_id(sdp) == 5
    assert extension_id("v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n") is None


async def test_reports_what_arrived_and_what_did_not() -> None:
    transport = RTCDtlsTransport(
        RTCIceTransport(RTCIceGatherer()), [RTCCertificate.generateCertificate()]
    )
    handed: list[bytes] = []

    async def inner(data: bytes, arrival_time_ms: int) -> None:
        handed.append(data)

    transport._handle_rtp_data = inner  # type: ignore[method-assign]
    now = [1_000_000]
    feedback = TransportFeedback("t", transport, EXT_ID, sender_ssrc=42, clock_us=lambda: now[0])
    packets = [rtp(100 + i, 500 + i) for i in range(6)]
    for i, packet in enumerate(packets):
        if i in (2, 3):
            continue  # dropped on the way (a cap's queue overflowed)
        now[0] += 10_000 if i < 4 else 60_000  # 10 ms apart, then queueing delay
        await transport._handle_rtp_data(packet, 0)
    assert handed == [p for i, p in enumerate(packets) if i not in (2, 3)]  # passed on
    assert feedback.recorded == 4
    sent = feedback.take_feedback()
    assert len(sent) == 1 and feedback.take_feedback() == []
    parsed = parse_feedback(sent[0])
    assert parsed is not None
    assert parsed.base == 500 and parsed.media_ssrc == 0x1234
    assert struct.unpack_from("!I", sent[0], 4)[0] == 42
    arrivals = parsed.arrivals
    assert [a is None for a in arrivals] == [False, False, True, True, False, False]
    # The arrival deltas, kept (250 µs ticks): 10 ms, then 60 ms each (a queue building).
    got = [a for a in arrivals if a is not None]
    assert [b - a for a, b in itertools.pairwise(got)] == [10_000, 60_000, 60_000]
