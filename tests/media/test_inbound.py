"""The SFU's own receive path: header parsing, demultiplexing, RTX, NACKs and reports.

Negotiation is real (aiortc offer and answer); packets are fed unprotected to
the receive path, and what it sends upstream is read back with aiortc's own
RTCP parser, an implementation independent of Huddle's.
"""

from __future__ import annotations

import random
import re
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pylibsrtp
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.rtp import RtcpPacket, RtcpPsfbPacket, RtcpRrPacket, RtcpRtpfbPacket, unpack_remb_fci

from media.aiortc_compat import accept_transport_cc
from media.inbound import PublisherInbound
from media.metrics import CountingMediaMetrics
from media.nack import NackTracker
from media.rtpheader import URI_MID, URI_TRANSPORT_CC, MalformedPacket, RtpPacket, parse_rtp
from media.twcc import TwccRecorder
from tests.support.polling import eventually


def rtp(
    ssrc: int,
    seq: int,
    pt: int,
    payload: bytes = b"\x10\x00\x00\x00",
    *,
    ts: int = 1000,
    extensions: bytes = b"",
    marker: bool = False,
) -> bytes:
    first = 0x90 if extensions else 0x80
    header = struct.pack("!BBHII", first, (0x80 if marker else 0) | pt, seq, ts, ssrc)
    if extensions:
        padded = extensions + bytes(-len(extensions) % 4)
        header += struct.pack("!HH", 0xBEDE, len(padded) // 4) + padded
    return header + payload


# --- the parser ---------------------------------------------------------------


def test_one_byte_extensions_csrcs_and_padding() -> None:
    ext = bytes([0x10, ord("a")]) + bytes([0x00]) + bytes([0x22, 1, 2, 3])  # mid "a", pad, id 2
    header = struct.pack("!BBHII", 0xB2, 0x80 | 96, 65535, 7, 0xABCDEF01)  # P, X, 2 CSRCs
    header += struct.pack("!II", 11, 12)
    header += struct.pack("!HH", 0xBEDE, 2) + ext + bytes(8 - len(ext))
    packet = parse_rtp(header + b"payload" + bytes([0, 0, 3]))
    assert (packet.marker, packet.payload_type, packet.sequence_number) == (True, 96, 65535)
    assert (packet.timestamp, packet.ssrc) == (7, 0xABCDEF01)
    assert packet.payload == b"payload"
    assert packet.extensions == {1: b"a", 2: b"\x01\x02\x03"}


def test_two_byte_extensions() -> None:
    elements = bytes([1, 3]) + b"mid" + bytes([0]) + bytes([200, 0]) + bytes([20, 2, 9, 9])
    body = elements + bytes(-len(elements) % 4)
    header = struct.pack("!BBHII", 0x90, 100, 1, 2, 3)
    header += struct.pack("!HH", 0x1000, len(body) // 4) + body
    packet = parse_rtp(header + b"x")
    assert packet.extensions == {1: b"mid", 200: b"", 20: b"\x09\x09"}
    assert packet.payload == b"x"


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "shorter"),
        (b"\x80\x60" + bytes(9), "shorter"),
        (b"\x40" + bytes(11), "version"),
        (b"\x8f" + bytes(11) + bytes(8), "CSRC"),  # 15 CSRCs announced, 2 present
        (b"\x90" + bytes(11) + b"\xbe\xde\x00\x05" + bytes(4), "extension"),
        (b"\x90" + bytes(11) + b"\xbe\xde\x00\x01" + b"\x1f\x00\x00\x00", "element"),
        (b"\xa0" + bytes(11) + b"\x00", "padding"),  # zero padding length
        (b"\xa0" + bytes(11) + b"ab\x09", "padding"),  # longer than the packet
    ],
)
def test_malformed_packets_raise_only_malformed_packet(data: bytes, reason: str) -> None:
    with pytest.raises(MalformedPacket, match=reason):
        parse_rtp(data)


def test_random_input_never_raises_anything_else() -> None:
    rng = random.Random(12)
    valid = rtp(1, 2, 96, extensions=bytes([0x10, 1, 0x21, 1, 2]))
    for _ in range(20_000):
        if rng.random() < 0.5:
            data = rng.randbytes(rng.randrange(0, 40))
        else:  # a valid packet with bytes flipped and cut
            data = bytearray(valid)
            for _ in range(rng.randrange(1, 4)):
                data[rng.randrange(len(data))] = rng.randrange(256)
            data = bytes(data[: rng.randrange(len(data) + 1)])
        try:
            packet = parse_rtp(data)
        except MalformedPacket:
            continue
        assert 12 <= packet.payload_start <= packet.payload_end <= len(data)


# --- demultiplexing ------------------------------------------------------------------


@dataclass
class Sent:
    mid: str
    ssrc: int | None
    rtx_ssrc: int | None
    pt: int
    rtx_pt: int | None


class Recorder:
    def __init__(self) -> None:
        self.packets: list[RtpPacket] = []
        self.keyframe_requests = 0
        self.repaired_bytes: list[int] = []  # per packet: RTX payload bytes, 0 if not RTX
        self._repaired = 0

    def on_packet(self, packet: RtpPacket) -> None:
        self.packets.append(packet)
        self.repaired_bytes.append(self._repaired)
        self._repaired = 0

    def repaired(self, nbytes: int) -> None:
        self._repaired = nbytes

    def request_keyframe(self) -> None:
        self.keyframe_requests += 1

    def sync(self) -> None:
        pass

    def layer(self, rid: str) -> Recorder:
        return self


def describe(offer: str) -> list[Sent]:
    """Per m-line of an aiortc offer: its SSRCs (FID group) and VP8/Opus and RTX types."""
    out = []
    for section in offer.split("\nm=")[1:]:
        mid = re.search(r"a=mid:(\S+)", section)
        pt = re.search(r"a=rtpmap:(\d+) (VP8|opus)/", section)
        rtx_pt = re.search(r"a=rtpmap:(\d+) rtx/", section)
        fid = re.search(r"a=ssrc-group:FID (\d+) (\d+)", section)
        ssrc = re.search(r"a=ssrc:(\d+) ", section)
        assert mid and pt
        out.append(
            Sent(
                mid.group(1),
                int(fid.group(1)) if fid else int(ssrc.group(1)) if ssrc else None,
                int(fid.group(2)) if fid else None,
                int(pt.group(1)),
                int(rtx_pt.group(1)) if rtx_pt else None,
            )
        )
    return out


@pytest.fixture
async def publish() -> AsyncIterator[tuple[PublisherInbound, list[Sent], dict[str, Recorder]]]:
    """An answered publish negotiation with two video m-lines and one audio."""
    client = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    server = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    for kind in ("audio", "video", "video"):
        client.addTransceiver(kind, direction="sendonly")
    await client.setLocalDescription(await client.createOffer())
    offer = client.localDescription.sdp
    await server.setRemoteDescription(RTCSessionDescription(offer, "offer"))
    await server.setLocalDescription(await server.createAnswer())
    inbound = PublisherInbound("test", metrics=CountingMediaMetrics(), remb_bitrate=1_500_000)
    inbound.configure(server)
    sent = describe(offer)
    sinks = {s.mid: Recorder() for s in sent}
    for mid, sink in sinks.items():
        inbound.bind(mid, sink)
    yield inbound, sent, sinks
    await inbound.close()
    await client.close()
    await server.close()


async def test_rtx_is_unwrapped_by_its_own_ssrc_with_two_bundled_video_tracks(
    publish: tuple[PublisherInbound, list[Sent], dict[str, Recorder]],
) -> None:
    inbound, sent, sinks = publish
    videos = [s for s in sent if s.rtx_ssrc is not None]
    assert len(videos) == 2 and videos[0].rtx_pt == videos[1].rtx_pt  # same RTX type on both
    for i, video in enumerate(videos):
        assert video.ssrc is not None and video.rtx_ssrc is not None and video.rtx_pt is not None
        inbound._on_rtp(rtp(video.ssrc, 100 + i, video.pt, b"media-%d" % i))
        osn = struct.pack("!H", 500 + i)
        inbound._on_rtp(rtp(video.rtx_ssrc, 7, video.rtx_pt, osn + b"repair-%d" % i, ts=42))
    for i, video in enumerate(videos):
        media, repaired = sinks[video.mid].packets
        assert media.payload == b"media-%d" % i and media.sequence_number == 100 + i
        assert repaired.payload == b"repair-%d" % i
        assert repaired.sequence_number == 500 + i  # the original sequence number
        assert repaired.payload_type == video.pt and repaired.ssrc == video.ssrc
        assert repaired.timestamp == 42
        # The sink hears which was a retransmission (not the layer's own rate).
        assert sinks[video.mid].repaired_bytes == [0, len(b"repair-%d" % i)]
    assert inbound.rtx_packets == 2
    assert not inbound.dropped


async def test_malformed_and_unknown_packets_are_dropped_and_counted(
    publish: tuple[PublisherInbound, list[Sent], dict[str, Recorder]],
) -> None:
    inbound, sent, sinks = publish
    audio = sent[0]
    assert audio.ssrc is not None
    bad = [
        b"",
        b"\x80\x00",
        b"\x40" + bytes(20),
        b"\x8f" + bytes(13),
        b"\xa0" + bytes(11) + b"\xff",
    ]
    for data in bad:
        inbound._on_rtp(data)
    inbound._on_rtp(rtp(0xDEAD, 1, audio.pt))  # an SSRC nobody signalled, no mid
    inbound._on_rtp(rtp(audio.ssrc, 1, 55))  # a payload type the m-line did not negotiate
    inbound._on_rtcp(b"\x81\xc8\xff\xff" + bytes(8))  # RTCP length past the end: ignored
    session = pylibsrtp.Session(
        pylibsrtp.Policy(key=bytes(30), ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND)
    )
    inbound._on_srtp(session, rtp(audio.ssrc, 2, audio.pt) + bytes(10))  # fails to unprotect
    assert inbound.dropped == {"malformed": len(bad) + 1, "unknown_ssrc": 1, "srtp": 1}
    metrics = inbound._metrics
    assert isinstance(metrics, CountingMediaMetrics)
    assert metrics.counts["dropped_malformed"] == len(bad) + 1
    assert not any(sink.packets for sink in sinks.values())


async def test_unsignalled_ssrcs_are_learnt_from_the_mid_extension() -> None:
    client = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    server = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    client.addTransceiver("video", direction="sendonly")
    await client.setLocalDescription(await client.createOffer())
    offer = client.localDescription.sdp
    video = describe(offer)[0]
    stripped = "\r\n".join(
        line for line in offer.split("\r\n") if not line.startswith(("a=ssrc:", "a=ssrc-group"))
    )
    await server.setRemoteDescription(RTCSessionDescription(stripped, "offer"))
    await server.setLocalDescription(await server.createAnswer())
    mid_id = int(re.search(rf"a=extmap:(\d+) {URI_MID}", server.localDescription.sdp).group(1))  # type: ignore[union-attr]
    inbound = PublisherInbound("test", metrics=CountingMediaMetrics(), remb_bitrate=0)
    sink = Recorder()
    try:
        inbound.configure(server)
        inbound.bind(video.mid, sink)
        mid_ext = bytes([(mid_id << 4) | (len(video.mid) - 1)]) + video.mid.encode()
        inbound._on_rtp(rtp(0x5151, 9, video.pt, b"first", extensions=mid_ext))
        inbound._on_rtp(rtp(0x5151, 10, video.pt, b"second"))  # later ones: by SSRC
        assert video.rtx_pt is not None
        inbound._on_rtp(rtp(0x6161, 1, video.rtx_pt, b"\x00\x09again", extensions=mid_ext))
        assert [p.payload for p in sink.packets] == [b"first", b"second", b"again"]
        assert sink.packets[2].sequence_number == 9
        assert inbound.media_ssrc(video.mid) == 0x5151
    finally:
        await inbound.close()
        await client.close()
        await server.close()


# --- upstream RTCP ------------------------------------------------------------------


async def test_gaps_are_nacked_and_reports_carry_loss_and_remb(
    publish: tuple[PublisherInbound, list[Sent], dict[str, Recorder]],
) -> None:
    inbound, sent, _ = publish
    video = sent[1]
    assert video.ssrc is not None
    upstream: list[bytes] = []

    def capture(packet: bytes) -> bool:
        upstream.append(packet)
        return True

    inbound._send = capture  # type: ignore[method-assign]
    for seq in (10, 11, 14, 15):
        inbound._on_rtp(rtp(video.ssrc, seq, video.pt))
    await eventually(lambda: bool(upstream), timeout=5, message="a NACK")
    (nack,) = RtcpPacket.parse(upstream[0])
    assert isinstance(nack, RtcpRtpfbPacket) and nack.fmt == 1
    assert nack.media_ssrc == video.ssrc and sorted(nack.lost) == [12, 13]
    assert inbound.send_pli(video.mid)
    (pli,) = RtcpPacket.parse(upstream[1])
    assert isinstance(pli, RtcpPsfbPacket) and pli.fmt == 1 and pli.media_ssrc == video.ssrc
    rr, remb = RtcpPacket.parse(inbound._reports())
    assert isinstance(rr, RtcpRrPacket) and len(rr.reports) == 1
    report = rr.reports[0]
    assert report.ssrc == video.ssrc and report.highest_sequence == 15
    assert report.packets_lost == 2 and report.fraction_lost == (2 << 8) // 6
    assert isinstance(remb, RtcpPsfbPacket) and remb.fmt == 15
    bitrate, ssrcs = unpack_remb_fci(remb.fci)
    assert ssrcs == [video.ssrc] and 1_400_000 < bitrate <= 1_500_000


def test_nack_tracker_retries_then_gives_up() -> None:
    tracker = NackTracker(retry_interval=0.1, max_retries=2, max_age=1.0)
    assert not tracker.received(65534, 0.0)
    assert tracker.received(1, 0.0)  # 65535 and 0 are missing (across the wrap)
    assert tracker.due(0.0) == [65535, 0]
    assert tracker.due(0.05) == []  # not due again yet
    tracker.received(0, 0.06)  # recovered by a retransmission
    assert tracker.due(0.11) == [65535]
    assert tracker.due(0.25) == []  # two NACKs sent: given up once due again
    assert tracker.missing == 0 and tracker.gave_up == 1 and tracker.recovered == 1
    assert tracker.received(2000, 1.0) is False  # a gap wider than max_missing: no NACK storm
    assert tracker.missing == 0


# --- transport-wide congestion control ------------------------------------------------


def parse_twcc(packet: bytes) -> tuple[int, int, list[int | None]]:
    """A reference reader of one TWCC feedback: (base seq, fb count, arrival µs or None each).

    Written from the draft's figures, independently of media.twcc.
    """
    assert packet[0] & 0x1F == 15 and packet[1] == 205
    assert (struct.unpack_from("!H", packet, 2)[0] + 1) * 4 == len(packet)
    base, count = struct.unpack_from("!HH", packet, 12)
    word = struct.unpack_from("!I", packet, 16)[0]
    reference, fb_count = word >> 8, word & 0xFF
    pos, statuses = 20, []
    while len(statuses) < count:
        chunk = struct.unpack_from("!H", packet, pos)[0]
        pos += 2
        if not chunk & 0x8000:  # run length
            statuses += [(chunk >> 13) & 3] * (chunk & 0x1FFF)
        elif chunk & 0x4000:  # 7 two-bit symbols
            statuses += [(chunk >> (12 - 2 * i)) & 3 for i in range(7)]
        else:  # 14 one-bit symbols
            statuses += [(chunk >> (13 - i)) & 1 for i in range(14)]
    statuses = statuses[:count]
    now = reference * 64_000
    arrivals: list[int | None] = []
    for status in statuses:
        if status == 0:
            arrivals.append(None)
            continue
        if status == 1:
            delta = packet[pos]
            pos += 1
        else:
            delta = struct.unpack_from("!h", packet, pos)[0]
            pos += 2
        now += delta * 250
        arrivals.append(now)
    assert len(packet) - pos < 4  # only padding left
    return base, fb_count, arrivals


def test_twcc_feedback_reports_arrivals_and_losses() -> None:
    recorder = TwccRecorder()
    t0 = 1_000_000_000
    arrivals = {65533: t0, 65534: t0 + 1000, 0: t0 + 250, 1: t0 + 90_000, 3: t0 + 90_500}
    for seq, at in arrivals.items():  # 65535 and 2 lost, 0 arrives before 65534's time
        recorder.record(seq, at)
    packet = recorder.feedback(0x11, 0x22)
    assert packet is not None and recorder.feedback(0x11, 0x22) is None
    base, fb_count, got = parse_twcc(packet)
    assert (base, fb_count) == (65533, 0)
    # Deltas (some negative, some over 255 ticks) add back up to the arrival times.
    assert got == [t0, t0 + 1000, None, t0 + 250, t0 + 90_000, None, t0 + 90_500]
    recorder.record(50, t0 + 100_000)  # a long run of losses: a run-length chunk
    base, fb_count, got = parse_twcc(recorder.feedback(0x11, 0x22) or b"")
    assert (base, fb_count) == (4, 1) and got[:-1] == [None] * 46 and got[-1] is not None


def test_twcc_feedback_survives_a_jump_in_sequence_numbers() -> None:
    recorder = TwccRecorder()
    recorder.record(10, 1_000_000)
    recorder.record(30_000, 1_001_000)  # 29,990 later: a sender restart or a forged packet
    first = recorder.feedback(1, 2)
    second = recorder.feedback(1, 2)
    assert first is not None and second is not None and recorder.feedback(1, 2) is None
    assert parse_twcc(first)[0] == 10
    base, _, arrivals = parse_twcc(second)
    assert base == 30_000 and arrivals == [1_001_000]


async def test_transport_cc_is_answered_and_fed_back() -> None:

    client = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    server = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    client.addTransceiver("video", direction="sendonly")
    await client.setLocalDescription(await client.createOffer())
    video = describe(client.localDescription.sdp)[0]
    assert video.ssrc is not None
    # What Chrome offers on top of aiortc's offer.
    offer = client.localDescription.sdp.replace(
        f"a=rtpmap:{video.pt} VP8/90000\r\n",
        f"a=rtpmap:{video.pt} VP8/90000\r\na=rtcp-fb:{video.pt} transport-cc\r\n",
    ).replace("a=mid:", f"a=extmap:5 {URI_TRANSPORT_CC}\r\na=mid:", 1)
    await server.setRemoteDescription(RTCSessionDescription(offer, "offer"))
    assert accept_transport_cc(server, URI_TRANSPORT_CC) == [video.mid]
    await server.setLocalDescription(await server.createAnswer())
    answer = server.localDescription.sdp
    assert f"a=extmap:5 {URI_TRANSPORT_CC}" in answer
    assert f"a=rtcp-fb:{video.pt} transport-cc" in answer
    inbound = PublisherInbound("test", metrics=CountingMediaMetrics(), remb_bitrate=0)
    upstream: list[bytes] = []

    def capture(packet: bytes) -> bool:
        upstream.append(packet)
        return True

    inbound._send = capture  # type: ignore[method-assign]
    try:
        inbound.configure(server)
        assert inbound.ids.transport_cc == 5
        for seq in range(10):
            ext = bytes([0x51, 0x01, 100 + seq])  # id 5, two bytes: transport seq 356+seq
            inbound._on_rtp(rtp(video.ssrc, 700 + seq, video.pt, extensions=ext))
        await eventually(lambda: bool(upstream), timeout=5, message="TWCC feedback")
        base, _, arrivals = parse_twcc(upstream[0])
        assert base == 356 and len(arrivals) == 10 and None not in arrivals
        assert inbound.twcc_feedbacks >= 1
    finally:
        await inbound.close()
        await client.close()
        await server.close()
