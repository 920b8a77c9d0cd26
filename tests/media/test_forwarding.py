"""Packet-level forwarding: header rewrite, continuity across a source switch, keyframe gate.

Outputs are read back with aiortc's own RTP parser, an implementation
independent of Huddle's.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from typing import Any

import pytest
from aiortc import RTCRtpSender
from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters, RTCRtpParameters
from aiortc.rtp import HeaderExtensionsMap
from aiortc.rtp import RtpPacket as AiortcPacket
from pylibsrtp import Policy, Session

from media import downstream
from media.fastsend import FastRtp
from media.forwarder import DownTrack, Forwardable, forwardable
from media.metrics import NoopMediaMetrics
from media.nack import PacketCache
from media.payload import parse_vp8
from media.rtpheader import parse_rtp
from media.sendlog import TRANSPORT_OVERHEAD, monotonic_us, new_log
from media.udpout import DatagramOut
from tests.support.polling import eventually

from .conftest import Call

MID = "urn:ietf:params:rtp-hdrext:sdes:mid"
ABS = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"
LEVEL = "urn:ietf:params:rtp-hdrext:ssrc-audio-level"
TWCC = "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01"


KEY = bytes(range(30))


class _Transport:
    state = "new"
    _state = "new"  # never connected: the tests give the sender its output
    _RTCDtlsTransport__tx_bytes = 0
    _RTCDtlsTransport__tx_packets = 0


class _SocketTransport:
    """What DatagramOut reads of an asyncio datagram transport."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def get_extra_info(self, name: str) -> Any:
        return self.sock if name == "socket" else None


class Wire:
    """A real loopback UDP path with real SRTP: what a subscriber would receive."""

    def __init__(self) -> None:
        # As aiortc keys it: a retransmission without RTX repeats a sequence number.
        policy = Policy(key=KEY, ssrc_type=Policy.SSRC_ANY_OUTBOUND)
        policy.allow_repeat_tx = True
        self.tx = Session(policy)
        self.rx = Session(Policy(key=KEY, ssrc_type=Policy.SSRC_ANY_INBOUND))
        self.sender_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sender_sock.bind(("127.0.0.1", 0))
        self.receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.receiver.bind(("127.0.0.1", 0))
        self.receiver.setblocking(False)
        self.outputs: list[DatagramOut] = []

    def output(self) -> DatagramOut:
        out = DatagramOut(
            self.tx,
            _SocketTransport(self.sender_sock),
            self.receiver.getsockname(),
            accelerated=IMPL.accelerated,
        )
        self.outputs.append(out)
        return out

    def received(self) -> list[bytes]:
        """The plaintext of every datagram that arrived so far."""
        packets = []
        while True:
            try:
                data = self.receiver.recv(65536)
            except BlockingIOError:
                return packets
            packets.append(self.rx.unprotect(data))

    def close(self) -> None:
        for out in self.outputs:
            out.close()
        self.sender_sock.close()
        self.receiver.close()


IMPL = downstream.PYTHON  # set per test by the fixture below
WIRES: list[Wire] = []


@pytest.fixture(params=["c", "python"])
def implementation(request: pytest.FixtureRequest) -> Iterator[downstream.Implementation]:
    """Every test runs on the C fan-out and on its Python reference."""
    global IMPL
    if request.param == "c":
        if downstream.C is None:
            pytest.skip("media._udpsend not built")
        IMPL = downstream.C
    else:
        IMPL = downstream.PYTHON
    yield IMPL
    for wire in WIRES:
        wire.close()
    WIRES.clear()


def _sender(kind: str, twcc: bool = False) -> tuple[RTCRtpSender, HeaderExtensionsMap]:
    sender = RTCRtpSender(kind, _Transport())  # type: ignore[arg-type]
    second = (3, ABS) if kind == "video" else (2, LEVEL)
    extensions = [
        RTCRtpHeaderExtensionParameters(id=1, uri=MID),
        RTCRtpHeaderExtensionParameters(id=second[0], uri=second[1]),
    ]
    if twcc:
        extensions.append(RTCRtpHeaderExtensionParameters(id=5, uri=TWCC))
    params = RTCRtpParameters(headerExtensions=extensions)
    ext_map = HeaderExtensionsMap()
    ext_map.configure(params)
    getattr(sender, "_RTCRtpSender__rtp_header_extensions_map").configure(params)  # noqa: B009
    setattr(sender, "_RTCRtpSender__mid", "3")  # noqa: B010
    return sender, ext_map


class Sent:
    """A sender under test and what its subscriber received."""

    def __init__(self, fast: FastRtp, ext_map: HeaderExtensionsMap, wire: Wire) -> None:
        self.fast = fast
        self.ext_map = ext_map
        self.wire = wire


_SENT: dict[int, Sent] = {}


def _fast(
    kind: str = "video", seq: int = 65534, ts: int = 0xFFFFFF00, *, twcc: Any = None
) -> tuple[FastRtp, Any]:
    sender, ext_map = _sender(kind, twcc is not None)
    fast = FastRtp(sender, kind, implementation=IMPL)
    fast.stream.twcc = twcc
    fast.prepare(payload_type=96 if kind == "video" else 111, sequence_number=seq,
                 timestamp_origin=ts)  # fmt: skip
    wire = Wire()
    WIRES.append(wire)
    fast.running = True
    fast.use_output(wire.output())
    assert fast.ready
    _SENT[id(fast)] = Sent(fast, ext_map, wire)
    return fast, ext_map


def set_running(fast: FastRtp, running: bool) -> None:
    fast.running = running
    fast.use_output(fast.out)


def vp8(
    seq: int,
    ts: int,
    pid: int,
    *,
    tl0: int | None = None,
    start: bool = True,
    key: bool = False,
    marker: bool = False,
    ssrc: int = 0x1111,
    size: int = 60,
) -> Forwardable:
    """A publisher's VP8 packet (with a one-byte mid extension of its own, id 9)."""
    ext = bytes([0x90, ord("a"), 0, 0])  # id 9, 1 byte "a", padding
    header = struct.pack("!BBHII", 0x90, (0x80 if marker else 0) | 100, seq, ts, ssrc)
    header += struct.pack("!HH", 0xBEDE, 1) + ext
    x = 0x80 | (0x40 if tl0 is not None else 0)
    desc = bytes([0x80 | (0x10 if start else 0), x, 0x80 | (pid >> 8), pid & 0xFF])
    if tl0 is not None:
        desc += bytes([tl0])
    tag = bytes([0x00 if key else 0x01]) + bytes(size - 1)
    packet = parse_rtp(header + desc + tag)
    descriptor = parse_vp8(packet.data, packet.payload_start, packet.payload_end)
    assert descriptor is not None
    return forwardable(packet, descriptor.keyframe, descriptor)


def sent(fast: FastRtp, ext_map: HeaderExtensionsMap) -> list[AiortcPacket]:
    """Flush ``fast`` and parse what its subscriber received (SRTP-unprotected)."""
    fast.flush()
    wire = _SENT[id(fast)].wire
    return [AiortcPacket.parse(p, ext_map) for p in wire.received()]


def payload(entry: Forwardable) -> bytes:
    return entry[0][entry[1] : entry[2]]


def picture_id(packet: AiortcPacket) -> int:
    d = packet.payload
    return ((d[2] & 0x7F) << 8) | d[3]


@pytest.mark.usefixtures("implementation")
async def test_gate_opens_at_a_keyframe_and_only_the_header_changes() -> None:
    fast, ext_map = _fast()
    assert not fast.forward(vp8(1000, 5000, 300))  # delta before any keyframe: held back
    first = vp8(1001, 9000, 301, key=True)
    assert fast.forward(first)
    assert fast.forward(vp8(1002, 9000, 301, start=False, marker=True))
    assert fast.forward(vp8(1003, 12000, 302, marker=True))
    out = sent(fast, ext_map)
    assert [p.sequence_number for p in out] == [65534, 65535, 0]
    base = 0xFFFFFF00
    assert [p.timestamp for p in out] == [base, base, (base + 3000) & 0xFFFFFFFF]
    assert [p.marker for p in out] == [0, 1, 1]
    assert {p.payload_type for p in out} == {96}
    assert {p.ssrc for p in out} == {fast.sender._ssrc}
    assert {p.extensions.mid for p in out} == {"3"}  # ours, not the publisher's "a"
    assert all(p.extensions.abs_send_time is not None for p in out)
    assert [picture_id(p) for p in out] == [301, 301, 302]
    # The payload after the descriptor is the publisher's, byte for byte.
    assert out[0].payload[4:] == payload(first)[4:]
    assert fast.packets_sent == 3


@pytest.mark.usefixtures("implementation")
async def test_source_switch_keeps_numbering_continuous() -> None:
    fast, ext_map = _fast(seq=100, ts=1_000_000)
    fast.forward(vp8(7, 50_000, 1000, tl0=17, key=True, marker=True))
    fast.forward(vp8(8, 53_000, 1001, tl0=18, marker=True))
    before = sent(fast, ext_map)
    fast.switch()  # another publisher takes this slot
    assert not fast.forward(vp8(40_000, 7_777_777, 20, tl0=200, ssrc=0x2222, marker=True))
    assert fast.forward(vp8(40_001, 7_780_777, 21, tl0=201, key=True, ssrc=0x2222, marker=True))
    assert fast.forward(vp8(40_002, 7_783_777, 22, tl0=202, ssrc=0x2222, marker=True))
    after = sent(fast, ext_map)
    seqs = [p.sequence_number for p in before + after]
    assert seqs == [100, 101, 102, 103]
    stamps = [p.timestamp for p in before + after]
    assert stamps == [1_000_000, 1_003_000, 1_006_000, 1_009_000]
    assert [picture_id(p) for p in before + after] == [1000, 1001, 1002, 1003]
    assert [p.payload[4] for p in before + after] == [17, 18, 19, 20]  # TL0PICIDX
    assert {p.ssrc for p in before + after} == {fast.sender._ssrc}


@pytest.mark.usefixtures("implementation")
async def test_reordered_packets_keep_their_place_and_old_ones_are_dropped() -> None:
    fast, ext_map = _fast(seq=500)
    fast.forward(vp8(10, 0, 1, key=True))
    fast.forward(vp8(12, 0, 1, start=False, marker=True))
    fast.forward(vp8(11, 0, 1, start=False))  # late (a retransmission upstream)
    assert not fast.forward(vp8(9, 0, 0, start=False))  # before the gate opened
    assert [p.sequence_number for p in sent(fast, ext_map)] == [500, 502, 501]
    assert fast.sequence_number == 503


@pytest.mark.usefixtures("implementation")
async def test_a_sender_that_is_not_running_closes_the_gate_again() -> None:
    fast, ext_map = _fast()
    fast.forward(vp8(1, 0, 1, key=True, marker=True))
    set_running(fast, False)
    assert not fast.forward(vp8(2, 3000, 2, marker=True))
    set_running(fast, True)
    assert not fast.forward(vp8(3, 6000, 3, marker=True))  # delta: must wait for a keyframe
    assert fast.forward(vp8(4, 9000, 4, key=True, marker=True))
    assert [p.sequence_number for p in sent(fast, ext_map)] == [65534, 65535]


@pytest.mark.usefixtures("implementation")
async def test_audio_level_is_forwarded() -> None:
    fast, ext_map = _fast("audio", seq=1, ts=0)
    header = struct.pack("!BBHII", 0x90, 0x80 | 111, 77, 960, 0x3333)
    header += struct.pack("!HH", 0xBEDE, 1) + bytes([0x50, 0x80 | 33, 0, 0])  # id 5: VAD, -33
    packet = parse_rtp(header + b"opus-frame")
    assert packet.extensions is not None
    # The up track reads the level once (at the publisher's id) for every subscriber.
    level = packet.extensions[5][0]
    assert fast.forward(forwardable(packet, True, None, level))
    (out,) = sent(fast, ext_map)
    assert out.extensions.audio_level == (True, 33)
    assert out.extensions.mid == "3"
    assert out.payload == b"opus-frame"


class FakeSource:
    """An up track's cache for subscribers' NACKs."""

    def __init__(self) -> None:
        self.cache: PacketCache[Forwardable] = PacketCache(1024)
        self.downs: list[DownTrack] = []
        self.keyframes = 0

    def cached(self, seq: int, down: DownTrack | None = None) -> Forwardable | None:
        return self.cache.get(seq)

    def add_down(self, down: DownTrack) -> None:
        self.downs.append(down)

    def remove_down(self, down: DownTrack) -> None:
        self.downs.remove(down)

    def request_keyframe(self, down: DownTrack | None = None) -> None:
        self.keyframes += 1

    def replay(self, down: DownTrack) -> None:
        pass  # nothing cached before the test forwards


@pytest.mark.usefixtures("implementation")
async def test_nacks_of_two_subscribers_are_answered_from_one_cached_packet() -> None:
    source = FakeSource()
    subscribers = []
    for seq in (200, 40_000):  # each subscriber numbers its stream its own way
        fast, ext_map = _fast(seq=seq)
        setattr(fast.sender, "_RTCRtpSender__rtx_payload_type", 97)  # noqa: B010
        down = DownTrack("video", NoopMediaMetrics())
        down.sender, fast.down = fast, down
        down.attach(source)  # type: ignore[arg-type]
        subscribers.append((fast, ext_map))
    entries = [vp8(5000 + i, 90_000, 7, key=i == 0, start=i == 0, marker=i == 3) for i in range(4)]
    for entry in entries:
        source.cache.put(entry[3], entry)
        for fast, _ in subscribers:
            assert fast.forward(entry)
    for fast, ext_map in subscribers:
        first = sent(fast, ext_map)[0].sequence_number
        assert first == fast.sequence_number - 4
        # The third packet was lost on the way; the tenth was never sent.
        assert fast.resend([(first + 2) & 0xFFFF, (first + 9) & 0xFFFF]) == 1
        (rtx,) = sent(fast, ext_map)
        assert rtx.payload_type == 97 and rtx.ssrc == fast.sender._rtx_ssrc
        osn = int.from_bytes(rtx.payload[:2], "big")
        assert osn == (first + 2) & 0xFFFF
        assert rtx.payload[2 + 4 :] == payload(entries[2])[4:]
        assert fast.retransmitted == 1
    assert source.cache.hits == 2


async def test_room_forwards_packets_and_answers_nacks_from_the_cache(call: Call) -> None:
    for name in ("ana", "ben", "cy"):
        await call.join(name)
    ana = call.room.participants["ana"]
    video_up = next(up for up in ana.published() if up.kind == "video")
    slots = [
        next(s for s in call.room.participants[n]._slots if s.current is video_up)
        for n in ("ben", "cy")
    ]

    def flowing() -> bool:
        return all(s.fast.packets_sent > 20 for s in slots)

    await eventually(flowing, message="packets forwarded to both subscribers")
    assert video_up.packets_in > 20
    if ana._inbound.accelerated:  # the C receive path took them, not Python's
        assert ana._inbound.fast_packets > 20
    assert ana._inbound.dropped.get("malformed", 0) == 0
    assert ana._inbound.dropped.get("unknown_ssrc", 0) == 0
    # Video leaves in GSO batches where packet sizes allow.
    out = slots[0].fast.out
    assert out is not None and out.syscalls < out.datagrams
    assert video_up.cache is not None
    hits = video_up.cache.hits
    for slot in slots:
        before = slot.fast.retransmitted  # (real NACKs may have been answered already)
        assert slot.fast.resend([(slot.fast.sequence_number - 2) & 0xFFFF]) == 1
        assert slot.fast.retransmitted == before + 1
    assert video_up.cache.hits >= hits + 2
    counts = call.metrics.counts
    assert counts["video_packets"] > counts["video_frames"] > 0
    assert counts["retransmitted"] >= 2


async def test_a_late_joiner_starts_from_the_cached_keyframe(call: Call) -> None:
    await call.join("ana")
    ben = await call.join("ben")
    await eventually(
        lambda: (s := ben.received_from("ana", "video")) is not None and s.frames > 40,
        message="ben receiving",
    )
    cy = await call.join("cy")
    slot = next(s for s in call.room.participants["cy"]._slots if s.kind == "video")
    await eventually(
        lambda: (s := cy.received_from("ana", "video")) is not None and s.keyframes >= 1,
        message="cy's first keyframe",
    )
    # Sent from the publisher's packet cache as soon as cy's connection was up.
    assert slot.down.replays == 1


@pytest.mark.usefixtures("implementation")
async def test_nack_answers_are_bounded_per_subscriber() -> None:
    """A subscriber cannot turn 4-byte NACK items into a flood of resends."""
    from media.fastsend import RESEND_BURST

    source = FakeSource()
    fast, ext_map = _fast(seq=0)
    # As RTX (libsrtp refuses to repeat a sequence number this far behind).
    setattr(fast.sender, "_RTCRtpSender__rtx_payload_type", 97)  # noqa: B010
    now = [1000.0]
    fast.clock = lambda: now[0]
    fast._tokens_at = now[0]
    down = DownTrack("video", NoopMediaMetrics())
    down.sender, fast.down = fast, down
    down.attach(source)  # type: ignore[arg-type]
    entries = [vp8(i, 90_000, 7, key=i == 0, start=i == 0) for i in range(600)]
    for entry in entries:
        source.cache.put(entry[3], entry)
        assert fast.forward(entry)
    sent(fast, ext_map)
    assert fast.resend([5]) == 1
    assert fast.resend([5]) == 0  # the same packet again at once: held off
    assert fast.resend(list(range(10, 600))) == RESEND_BURST - 1  # the bucket runs dry
    assert fast.resends_refused > 0
    now[0] += 0.2  # refilled at RESEND_RATE; the hold-off on 5 is over
    assert fast.resend([5]) == 1


@pytest.mark.usefixtures("implementation")
async def test_transport_wide_numbers_run_across_the_connections_streams() -> None:
    """Every packet of one connection, forwarded or resent, on any stream, takes the
    connection's next transport-wide number, and its log says when and how big."""
    log = new_log(IMPL.accelerated)
    video, video_map = _fast(twcc=log)
    audio, audio_map = _fast("audio", seq=10, ts=0, twcc=log)
    setattr(video.sender, "_RTCRtpSender__rtx_payload_type", 97)  # noqa: B010
    source = FakeSource()
    down = DownTrack("video", NoopMediaMetrics())
    down.sender, video.down = video, down
    down.attach(source)  # type: ignore[arg-type]
    entries = [vp8(700 + i, 90_000, 7, key=i == 0, start=i == 0, marker=i == 2) for i in range(3)]
    for entry in entries:
        source.cache.put(entry[3], entry)
        assert video.forward(entry)
    received = sent(video, video_map)
    header = struct.pack("!BBHII", 0x80, 111, 50, 960, 0x3333)
    assert audio.forward(forwardable(parse_rtp(header + b"opus-frame"), True, None))
    received += sent(audio, audio_map)
    assert video.resend([received[1].sequence_number]) == 1
    received += sent(video, video_map)
    numbers = [p.extensions.transport_sequence_number for p in received]
    assert numbers == [0, 1, 2, 3, 4]
    assert received[-1].payload_type == 97  # the RTX resend took the next number too
    assert log.next == 5 and log.packets == 5
    wire_sizes = [
        len(p.serialize(video_map if p.payload_type != 111 else audio_map)) for p in received
    ]
    looked_up = log.lookup(0, 6)
    assert looked_up[5] is None
    sizes = [entry[1] for entry in looked_up[:5] if entry is not None]
    # The log holds the size on the link: the plaintext, the SRTP tag, IP and UDP headers.
    extra = 10 + TRANSPORT_OVERHEAD
    assert [size - plain for size, plain in zip(sizes, wire_sizes, strict=True)] == [extra] * 5
    times = [entry[0] for entry in looked_up[:5] if entry is not None]
    assert times == sorted(times) and monotonic_us() - times[0] < 60_000_000


@pytest.mark.usefixtures("implementation")
async def test_without_the_extension_nothing_is_numbered() -> None:
    log = new_log(IMPL.accelerated)
    sender, ext_map = _sender("video")
    fast = FastRtp(sender, "video", implementation=IMPL)
    fast.stream.twcc = log
    fast.prepare(payload_type=96, sequence_number=1, timestamp_origin=0)
    wire = Wire()
    WIRES.append(wire)
    fast.running = True
    fast.use_output(wire.output())
    _SENT[id(fast)] = Sent(fast, ext_map, wire)
    assert fast.forward(vp8(1, 0, 1, key=True, marker=True))
    (packet,) = sent(fast, ext_map)
    assert packet.extensions.transport_sequence_number is None
    assert log.next == 0 and log.packets == 0


@pytest.mark.usefixtures("implementation")
async def test_numbers_leave_in_order_when_streams_interleave() -> None:
    """A stream numbering a packet sends another stream's queued numbered batch first,
    so the subscriber receives the numbers in order (one receiving socket here)."""
    log = new_log(IMPL.accelerated)
    video, video_map = _fast(twcc=log)
    audio, audio_map = _fast("audio", seq=10, ts=0, twcc=log)
    # Both streams' datagrams arrive at one socket, as over one bundled connection.
    audio_wire = _SENT[id(audio)].wire
    audio.use_output(_SENT[id(video)].wire.output())
    audio_wire.close()
    assert video.forward(vp8(1, 0, 1, key=True))  # queued: the frame is not complete
    header = struct.pack("!BBHII", 0x80, 111, 50, 960, 0x3333)
    assert audio.forward(forwardable(parse_rtp(header + b"opus-frame"), True, None))
    assert video.forward(vp8(2, 0, 1, start=False, marker=True))
    video.flush()
    audio.flush()
    wire = _SENT[id(video)].wire
    got = []
    for data in wire.received():
        kind_map = audio_map if data[1] & 0x7F == 111 else video_map
        got.append(AiortcPacket.parse(data, kind_map).extensions.transport_sequence_number)
    assert got == [0, 1, 2]
    assert log.disorder == 0


@pytest.mark.usefixtures("implementation")
async def test_probe_padding_is_rtx_copies_of_the_newest_packets_numbered() -> None:
    log = new_log(IMPL.accelerated)
    fast, ext_map = _fast(twcc=log)
    setattr(fast.sender, "_RTCRtpSender__rtx_payload_type", 97)  # noqa: B010
    assert fast.pad(1000) == 0  # nothing forwarded yet: nothing to copy
    # Once it forwards: RTX copies of the newest packets, from the publisher's cache.
    source = FakeSource()
    down = DownTrack("video", NoopMediaMetrics())
    down.sender, fast.down = fast, down
    down.attach(source)  # type: ignore[arg-type]
    entry = vp8(1, 9000, 1, key=True, marker=True, size=600)
    source.cache.put(entry[3], entry)
    assert fast.forward(entry)
    (media,) = sent(fast, ext_map)
    fast.pad(700)
    copies = sent(fast, ext_map)
    assert copies[0].payload_type == 97 and copies[0].payload[2 + 4 :] == payload(entry)[4:]
    assert int.from_bytes(copies[0].payload[:2], "big") == media.sequence_number
    numbers = [p.extensions.transport_sequence_number for p in [media, *copies]]
    assert numbers == list(range(len(numbers)))
    assert fast.packets_sent == 1  # padding is not media
    setattr(fast.sender, "_RTCRtpSender__rtx_payload_type", None)  # noqa: B010
    assert fast.pad(1000) == 0  # no RTX, no padding


@pytest.mark.usefixtures("implementation")
async def test_a_paused_stream_still_pads_with_copies_of_what_it_sent_last() -> None:
    """Paused (its source gone: a switch), a stream forwards nothing, yet probes must
    still find out when the video would fit again: copies of its newest packets."""
    log = new_log(IMPL.accelerated)
    fast, ext_map = _fast(twcc=log)
    setattr(fast.sender, "_RTCRtpSender__rtx_payload_type", 97)  # noqa: B010
    source = FakeSource()
    down = DownTrack("video", NoopMediaMetrics())
    down.sender, fast.down = fast, down
    down.attach(source)  # type: ignore[arg-type]
    entry = vp8(1, 9000, 1, key=True, marker=True, size=600)
    source.cache.put(entry[3], entry)
    assert fast.forward(entry)
    (media,) = sent(fast, ext_map)
    fast.switch()  # paused: the source goes
    source.cache = type(source.cache)(16)  # and its cache moved on
    assert fast.pad(2000) >= 2000
    copies = sent(fast, ext_map)
    assert len(copies) >= 3  # one packet kept, copied round and round
    for copy in copies:
        assert copy.payload_type == 97
        assert int.from_bytes(copy.payload[:2], "big") == media.sequence_number
    rtx_numbers = [c.sequence_number for c in copies]
    assert len(set(rtx_numbers)) == len(rtx_numbers)  # each copy its own RTX number
    assert fast.packets_sent == 1
