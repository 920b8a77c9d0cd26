"""Fuzzing of every parser of network input the SFU has: RTP, RTCP, payloads, SDP, candidates.

The SFU's receive loop is aiortc's: a DTLS transport reads datagrams, SRTP
unprotects them, ``RtpPacket.parse`` / ``RtcpPacket.parse`` read them (a
``ValueError`` drops the packet), the receiver depayloads (``ValueError``
drops it) and hands it to :mod:`media.loadtest.reassembly`. Any other exception ends
that transport's loop, and with it the participant's connection. So the
contract checked here is: each parser returns or raises its documented
exception, never ``IndexError``/``struct.error``/``KeyError``/... Offers and
candidates from clients may raise only :class:`media.errors.BadSignal`.

Then the same, end to end, on a real :class:`media.room.Room` with real
aiortc peers on 127.0.0.1: garbage datagrams on the SFU's media port,
malicious RTP/RTCP inside valid SRTP from a participant, malformed offers;
the room keeps working. Example counts come from tests/reliability/scale.py.
"""

from __future__ import annotations

import asyncio
import functools
import random
import socket
import struct
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pylibsrtp
import pytest
from aiortc import RTCPeerConnection
from aiortc.codecs import depayload
from aiortc.rtcrtpparameters import (
    RTCRtpCodecParameters,
    RTCRtpHeaderExtensionParameters,
    RTCRtpParameters,
)
from aiortc.rtp import HeaderExtensionsMap, RtcpPacket, RtpPacket
from aiortc.sdp import SessionDescription
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import media.aiortc_compat  # noqa: F401 - installs the receive-path guards, as the SFU does
from media.aiortc_compat import restrict_host_addresses
from media.config import MediaConfig
from media.errors import BadSignal, MediaError
from media.loadtest.frames import is_keyframe
from media.loadtest.preencoded import EncodedClip, opus_clip, vp8_clip
from media.loadtest.reassembly import (
    MAX_FRAME_PACKETS,
    MAX_PENDING_FRAMES,
    AudioForwardingBuffer,
    VideoForwardingBuffer,
)
from media.loadtest.rtpcount import RtpCounter, StreamCount, vp8_keyframe
from media.loadtest.sfuclient import LocalSignaling, SfuClient
from media.room import Room
from media.signals import announce_ip, ice_ufrag, parse_candidate, parse_description
from tests.reliability.scale import examples
from tests.support.polling import eventually

FUZZ = settings(
    max_examples=examples(300, 20_000),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# Every header extension aiortc reads, on ids 1..7 (clients negotiate such ids).
EXTENSION_URIS = (
    "urn:ietf:params:rtp-hdrext:sdes:mid",
    "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id",
    "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id",
    "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time",
    "urn:ietf:params:rtp-hdrext:toffset",
    "urn:ietf:params:rtp-hdrext:ssrc-audio-level",
    "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01",
)


@functools.cache
def extensions_map() -> HeaderExtensionsMap:
    mapping = HeaderExtensionsMap()
    mapping.configure(
        RTCRtpParameters(
            headerExtensions=[
                RTCRtpHeaderExtensionParameters(id=i + 1, uri=uri)
                for i, uri in enumerate(EXTENSION_URIS)
            ]
        )
    )
    return mapping


# --- strategies ------------------------------------------------------------


@st.composite
def extension_block(draw: st.DrawFn) -> bytes:
    """An RTP header extension: one- or two-byte elements of any size, any declared length."""
    profile = draw(st.sampled_from([0xBEDE, 0xBEDE, 0xBEDE, 0x1000, 0x1001, 0x0000, 0xFFFF]))
    body = b""
    for _ in range(draw(st.integers(0, 4))):
        x_id = draw(st.one_of(st.integers(1, len(EXTENSION_URIS)), st.integers(0, 15)))
        value = draw(st.binary(min_size=1, max_size=5) | st.binary(max_size=18))
        if profile == 0xBEDE:
            declared = draw(st.sampled_from([len(value)] * 4 + [1, 2, 3, 4, 16]))
            body += bytes([(x_id << 4) | ((declared - 1) & 0x0F)]) + value
        else:
            declared = draw(st.sampled_from([len(value)] * 4 + [0, 1, 255]))
            body += bytes([x_id, declared & 0xFF]) + value
        body += b"\x00" * draw(st.integers(0, 2))  # padding between elements
    words = (len(body) + 3) // 4
    body = body.ljust(words * 4, b"\x00")
    length = draw(st.one_of(st.just(words), st.just(words), st.integers(0, 0xFFFF)))
    return struct.pack("!HH", profile, length) + body


@st.composite
def rtp_packets(draw: st.DrawFn) -> bytes:
    """A structured RTP packet, then corrupted: CSRC counts, extensions, padding, truncation."""
    csrc_count = draw(st.integers(0, 15))
    padding = draw(st.sampled_from([False, False, True]))
    extension = draw(st.sampled_from([True, True, False]))
    version = draw(st.sampled_from([2] * 9 + [0, 1, 3]))
    first = (version << 6) | (0x20 if padding else 0) | (0x10 if extension else 0) | csrc_count
    second = (0x80 if draw(st.booleans()) else 0) | draw(st.sampled_from([0, 96, 97, 111, 127]))
    data = bytes([first, second]) + draw(st.binary(min_size=10, max_size=10))
    # All the CSRCs the count claims, or (a huge count) fewer.
    exact = st.binary(min_size=4 * csrc_count, max_size=4 * csrc_count)
    data += draw(st.one_of(exact, exact, exact, st.binary(max_size=4 * csrc_count)))
    if extension:
        data += draw(extension_block())
    data += draw(st.binary(max_size=40))
    if padding:
        data += draw(st.binary(max_size=6)) + bytes([draw(st.integers(0, 255))])
    cut = draw(st.one_of(st.none(), st.none(), st.none(), st.integers(0, len(data))))
    return data if cut is None else data[:cut]


@st.composite
def rtcp_compounds(draw: st.DrawFn) -> bytes:
    """RTCP compound packets with wrong counts, lengths, types and padding."""
    data = b""
    for _ in range(draw(st.integers(1, 3))):
        count = draw(st.integers(0, 31))
        padding = draw(st.booleans())
        packet_type = draw(st.sampled_from([200, 201, 202, 203, 204, 205, 206, 207, 199]))
        body = draw(st.binary(max_size=48))
        if padding:
            body += bytes([draw(st.integers(0, 255))])
        words = draw(st.one_of(st.just((len(body) + 3) // 4), st.integers(0, 0xFFFF)))
        version = draw(st.sampled_from([2, 2, 2, 1]))
        header = bytes([(version << 6) | (0x20 if padding else 0) | count, packet_type])
        data += header + struct.pack("!H", words) + body
    cut = draw(st.one_of(st.none(), st.integers(0, len(data))))
    return data if cut is None else data[:cut]


# --- RTP, RTCP and payloads -------------------------------------------------


def _one_byte_extension(x_id: int, value: bytes) -> bytes:
    """A valid RTP header (VP8, marker) whose one extension element is ``value``."""
    body = bytes([(x_id << 4) | (len(value) - 1)]) + value
    words = (len(body) + 3) // 4
    header = bytes([0x90, 0x80 | 96]) + struct.pack("!HII", 1, 2, 3)
    return header + struct.pack("!HH", 0xBEDE, words) + body.ljust(4 * words, b"\x00") + b"\x10"


# Elements of the wrong size for what their id carries (struct.error in aiortc 1.16).
WRONG_SIZE_EXTENSIONS = [
    _one_byte_extension(4, b"\x01\x02"),  # abs-send-time: 3 bytes
    _one_byte_extension(5, b"\x01\x02\x03\x04"),  # toffset: 3 bytes
    _one_byte_extension(6, b"\x01\x02"),  # audio level: 1 byte
    _one_byte_extension(7, b"\x01"),  # transport-wide sequence number: 2 bytes
]


@FUZZ
@given(data=st.one_of(st.binary(max_size=300), rtp_packets()))
@example(data=WRONG_SIZE_EXTENSIONS[0])
@example(data=WRONG_SIZE_EXTENSIONS[1])
@example(data=WRONG_SIZE_EXTENSIONS[2])
@example(data=WRONG_SIZE_EXTENSIONS[3])
def test_rtp_parse_raises_only_value_error(data: bytes) -> None:
    try:
        packet = RtpPacket.parse(data, extensions_map())
    except ValueError:
        return  # aiortc's transport drops the packet
    assert 0 <= packet.payload_type <= 127
    assert len(packet.payload) <= len(data)


@FUZZ
@given(data=st.one_of(st.binary(max_size=300), rtcp_compounds()))
def test_rtcp_parse_raises_only_value_error(data: bytes) -> None:
    try:
        packets = RtcpPacket.parse(data)
    except ValueError:
        return
    assert isinstance(packets, list)


CODECS = (
    RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=96),
    RTCRtpCodecParameters(mimeType="video/H264", clockRate=90000, payloadType=97),
    RTCRtpCodecParameters(mimeType="audio/opus", clockRate=48000, channels=2, payloadType=111),
)


@FUZZ
@given(codec=st.sampled_from(CODECS), payload=st.binary(min_size=1, max_size=200))
def test_depayloaders_raise_only_value_error(codec: RTCRtpCodecParameters, payload: bytes) -> None:
    try:
        data = depayload(codec, payload)
    except ValueError:
        return  # the receiver drops the packet
    assert isinstance(data, bytes)
    assert isinstance(is_keyframe(codec.name, data), bool)


@FUZZ
@given(payload=st.binary(max_size=64))
def test_keyframe_detectors_never_raise(payload: bytes) -> None:
    assert isinstance(vp8_keyframe(payload), bool)
    for name in ("vp8", "h264", "opus", "VP8", ""):
        assert isinstance(is_keyframe(name, payload), bool)


async def _counter(frames: list[tuple[str, str, int, bool]]) -> tuple[RTCPeerConnection, Any]:
    pc = RTCPeerConnection()
    transceiver = pc.addTransceiver("video", direction="recvonly")

    def on_frame(mid: str, kind: str, nbytes: int, keyframe: bool) -> None:
        frames.append((mid, kind, nbytes, keyframe))

    counter = RtpCounter(pc, transceiver.receiver.transport, on_frame)
    # SSRC 3 is a known VP8 stream (as after the first packet of a negotiated one).
    counter.streams[3] = StreamCount(mid="0", kind="video", rtx=False, vp8=True)
    return pc, counter


def test_load_generator_rtp_counter_takes_any_packet() -> None:
    """media.loadtest.rtpcount reads headers by hand: any packet is counted or skipped."""
    frames: list[tuple[str, str, int, bool]] = []
    loop = asyncio.new_event_loop()
    try:
        pc, counter = loop.run_until_complete(_counter(frames))

        @FUZZ
        @given(data=st.one_of(st.binary(max_size=300), rtp_packets()), known=st.booleans())
        @example(data=WRONG_SIZE_EXTENSIONS[0], known=False)
        def count(data: bytes, known: bool) -> None:
            if known and len(data) >= 12:
                data = data[:8] + (3).to_bytes(4, "big") + data[12:]
            before = counter.streams[3].packets
            loop.run_until_complete(counter._handle(data, 0))
            stream = counter.streams[3]
            assert stream.packets in (before, before + 1)
            assert stream.lost >= 0 and stream.frame_bytes >= 0

        count()
        assert all(nbytes >= 0 for _, _, nbytes, _ in frames)
        loop.run_until_complete(pc.close())
    finally:
        loop.close()


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


packet_fields = st.tuples(
    st.integers(0, 0xFFFF),  # sequence number
    st.integers(0, 0xFFFFFFFF),  # timestamp
    st.booleans(),  # marker
    st.sampled_from([96, 97, 100]),  # VP8, H264, unknown
    st.binary(max_size=12),  # payload (also what a depayloader returned)
    st.floats(0, 0.5),  # time since the previous packet
)


@FUZZ
@given(stream=st.lists(packet_fields, max_size=80))
def test_forwarding_buffers_take_any_packet_sequence(
    stream: list[tuple[int, int, bool, int, bytes, float]],
) -> None:
    clock = _Clock()
    frames: list[Any] = []
    names = {96: "vp8", 97: "h264"}
    video = VideoForwardingBuffer(names, 90000, frames.append, lambda: None, 0.2, clock)
    audio = AudioForwardingBuffer({111: "opus"}, 48000, frames.append)
    for seq, ts, marker, pt, payload, wait in stream:
        clock.now += wait
        packet = RtpPacket(
            payload_type=pt, marker=int(marker), sequence_number=seq, timestamp=ts, ssrc=1
        )
        packet.payload = payload
        packet._data = payload  # type: ignore[attr-defined]
        assert video.add(packet) == (False, None)
        assert audio.add(packet) == (False, None)
        assert len(video._pending) <= MAX_PENDING_FRAMES
        assert all(len(f.packets) <= MAX_FRAME_PACKETS for f in video._pending.values())
    assert all(frame.data for frame in frames)


# --- SDP and candidates ------------------------------------------------------


async def make_offer() -> str:
    """A publisher's offer from a real aiortc peer connection (audio + video)."""
    pc = RTCPeerConnection()
    try:
        pc.addTransceiver("audio", direction="sendonly")
        pc.addTransceiver("video", direction="sendonly")
        await pc.setLocalDescription(await pc.createOffer())
        return str(pc.localDescription.sdp)
    finally:
        await pc.close()


@functools.cache
def real_offer() -> str:
    restrict_host_addresses(["127.0.0.1"])
    try:
        return asyncio.run(make_offer())
    finally:
        restrict_host_addresses([])


JUNK = st.sampled_from(["", " ", "x", "-1", "0", "99999999999", ":", "/", "a=b", "\x00", "é"])


@st.composite
def mutated_sdp(draw: st.DrawFn) -> str:
    """The real offer with lines deleted, cut, duplicated or given junk values."""
    lines = real_offer().split("\r\n")
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(lines) - 1))
        op = draw(st.integers(0, 4))
        if op == 0:
            del lines[i]
        elif op == 1:
            lines[i] = lines[i][: draw(st.integers(0, len(lines[i])))]
        elif op == 2:
            lines.insert(i, lines[draw(st.integers(0, len(lines) - 1))])
        elif op == 3:
            parts = lines[i].split(" ")
            parts[draw(st.integers(0, len(parts) - 1))] = draw(JUNK)
            lines[i] = " ".join(parts)
        else:
            key, _, _ = lines[i].partition(":")
            lines[i] = f"{key}:{draw(JUNK)}"
    return "\r\n".join(lines)


@FUZZ
@given(sdp=st.one_of(mutated_sdp(), st.text(max_size=200), st.just("v=0\r\n")))
def test_offers_are_parsed_or_refused_as_bad_signal(sdp: str) -> None:
    try:
        description = parse_description({"type": "offer", "sdp": sdp}, "offer")
    except BadSignal:
        return
    SessionDescription.parse(description.sdp)  # what aiortc will do with it: no surprise
    assert isinstance(ice_ufrag(sdp), str | None)
    assert isinstance(announce_ip(sdp, "192.0.2.1"), str)


candidate_lines = st.one_of(
    st.text(max_size=80),
    st.builds(
        " ".join,
        st.lists(
            st.one_of(
                JUNK,
                st.sampled_from(["candidate:1", "1", "udp", "2130706431", "127.0.0.1", "9"]),
                st.sampled_from(
                    ["typ", "host", "srflx", "raddr", "rport", "generation", "tcptype"]
                ),
            ),
            max_size=12,
        ),
    ),
)


@FUZZ
@given(
    raw=st.one_of(
        st.none(),
        st.text(max_size=20),
        st.integers(),
        st.fixed_dictionaries(
            {"candidate": st.one_of(candidate_lines, st.integers(), st.none())},
            optional={
                "sdpMid": st.one_of(st.text(max_size=4), st.integers(), st.none()),
                "sdpMLineIndex": st.one_of(st.integers(), st.text(max_size=4), st.none()),
            },
        ),
    )
)
def test_candidates_are_parsed_or_refused_as_bad_signal(raw: object) -> None:
    try:
        candidate = parse_candidate({"type": "ice_candidate", "candidate": raw})
    except BadSignal:
        return
    assert candidate is None or isinstance(candidate.port, int)


# --- end to end: a real room ------------------------------------------------


@pytest.fixture(scope="module")
def clips() -> tuple[EncodedClip, EncodedClip]:
    return vp8_clip(frames=60, width=160, height=120, bitrate=150_000), opus_clip()


@pytest.fixture
def loopback_ice() -> Iterator[None]:
    restrict_host_addresses(["127.0.0.1"])
    yield
    restrict_host_addresses([])


class _Room:
    def __init__(self, clips: tuple[EncodedClip, EncodedClip]) -> None:
        self.config = MediaConfig(ice_hosts=("127.0.0.1",), ice_servers=())
        self.signaling = LocalSignaling()
        self.room = Room("fuzz", self.config, self.signaling)
        self.clients: dict[str, SfuClient] = {}
        self._video, self._audio = clips

    async def join(self, participant_id: str) -> SfuClient:
        async def send(message: dict[str, object]) -> None:
            await self.room.handle_signal(participant_id, message)

        client = SfuClient(
            participant_id,
            send,
            rtc_configuration=self.config.rtc_configuration(),
            video=self._video,
            audio=self._audio,
        )
        self.clients[participant_id] = client
        self.signaling.clients[participant_id] = client
        await client.publish()
        return client

    def frames(self, receiver: str, sender: str, kind: str = "video") -> int:
        stats = self.clients[receiver].received_from(sender, kind)
        return 0 if stats is None else stats.frames

    async def flowing(self, receiver: str, sender: str, more: int = 15) -> None:
        """``receiver`` gets ``more`` new frames of ``sender``'s video."""
        start = self.frames(receiver, sender)
        await eventually(
            lambda: self.frames(receiver, sender) >= start + more,
            timeout=20,
            message=f"{receiver} receiving {sender}'s video",
        )

    def sfu_publish_pc(self, participant_id: str) -> RTCPeerConnection:
        pc: RTCPeerConnection = self.room.participants[participant_id]._publish_pc
        return pc

    async def close(self) -> None:
        for client in self.clients.values():
            await client.close()
        await self.room.close()


@pytest.fixture
async def room(loopback_ice: None, clips: tuple[EncodedClip, EncodedClip]) -> AsyncIterator[_Room]:
    r = _Room(clips)
    try:
        await r.join("ana")
        await r.join("ben")
        await r.flowing("ben", "ana")
        await r.flowing("ana", "ben")
        yield r
    finally:
        await r.close()


def _transports_alive(pc: RTCPeerConnection) -> bool:
    return pc.connectionState == "connected" and all(
        t.sender.transport.state == "connected" for t in pc.getTransceivers()
    )


def _candidate_ports(sdp: str) -> set[int]:
    ports = set()
    for line in sdp.splitlines():
        if line.startswith("a=candidate:"):
            parts = line.split()
            if len(parts) > 5 and parts[4] == "127.0.0.1":
                ports.add(int(parts[5]))
    return ports


def _garbage(rng: random.Random) -> Iterator[bytes]:
    yield b""  # zero-length: not STUN, handed up as data
    for first in (0, 1, 19, 20, 63, 64, 127, 128, 191, 192, 255):
        yield bytes([first])
    for _ in range(examples(150, 3000)):
        size = rng.choice([1, 2, 11, 12, 20, 60, 200, 1200])
        data = bytearray(rng.randbytes(size))
        data[0] = rng.choice([0x00, 0x01, 0x16, 0x17, 0x80, 0x90, 0xBF, data[0]])
        yield bytes(data)


async def test_garbage_on_the_sfu_media_socket_leaves_the_room_working(room: _Room) -> None:
    pc = room.sfu_publish_pc("ana")
    ports = _candidate_ports(pc.localDescription.sdp)
    ports |= _candidate_ports(room.room.participants["ben"]._subscribe_pc.localDescription.sdp)
    assert ports, "the SFU offered no 127.0.0.1 candidate"
    rng = random.Random(11)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        for i, datagram in enumerate(_garbage(rng)):
            for port in ports:
                sock.sendto(datagram, ("127.0.0.1", port))
            if i % 20 == 0:
                await asyncio.sleep(0.005)  # let the SFU read them
    await room.flowing("ben", "ana")
    await room.flowing("ana", "ben")
    assert _transports_alive(pc)


def _malicious_rtp(rng: random.Random, ssrc: int) -> Iterator[bytes]:
    """RTP a participant could send inside valid SRTP: every header field its own."""
    for _ in range(examples(200, 4000)):
        csrc_count = rng.choice([0, 0, 1, 15])
        extension = rng.random() < 0.8
        first = 0x80 | (0x20 if rng.random() < 0.3 else 0) | (0x10 if extension else 0)
        first |= csrc_count
        header = bytes([first, (rng.getrandbits(1) << 7) | rng.choice([96, 97, 100, 111, 0])])
        header += struct.pack("!HII", rng.getrandbits(16), rng.getrandbits(32), ssrc)
        header += rng.randbytes(4 * csrc_count)
        ext = b""
        if extension:
            body = b""
            for _ in range(rng.randint(1, 3)):
                value = rng.randbytes(rng.choice([0, 1, 2, 3, 5, 8]))
                declared = len(value) if value else 1
                body += bytes([(rng.randint(1, 14) << 4) | ((declared - 1) & 0x0F)]) + value
            words = (len(body) + 3) // 4
            ext = struct.pack("!HH", 0xBEDE, words) + body.ljust(words * 4, b"\x00")
        payload = rng.randbytes(rng.choice([1, 3, 10, 100]))
        if first & 0x20:
            payload += bytes([rng.choice([1, len(payload) + 1, 255])])
        yield header + ext + payload


async def test_malicious_rtp_and_rtcp_inside_srtp_leave_the_room_working(room: _Room) -> None:
    client = room.clients["ana"]
    assert client.publish_pc is not None
    transceiver = next(t for t in client.publish_pc.getTransceivers() if t.kind == "video")
    dtls = transceiver.sender.transport
    rng = random.Random(12)
    sent = 0
    for i, data in enumerate(_malicious_rtp(rng, rng.getrandbits(32))):
        rtcp = rng.randbytes(rng.choice([4, 8, 28]))
        rtcp = bytes([0x80 | (rtcp[0] & 0x3F), rng.choice([200, 201, 205, 206])]) + rtcp[2:]
        for packet in (data, rtcp):
            try:
                await dtls._send_rtp(packet)  # protected with the connection's real keys
                sent += 1
            except pylibsrtp.Error:
                pass  # libsrtp itself refused to protect it: it never leaves
        if i % 20 == 0:
            await asyncio.sleep(0.005)
    assert sent > examples(200, 4000)  # most of them went out
    pc = room.sfu_publish_pc("ana")
    await room.flowing("ana", "ben")
    await room.flowing("ben", "ana", more=1)
    assert _transports_alive(pc)


async def test_malformed_offers_get_bad_signal_and_the_room_keeps_working(room: _Room) -> None:
    rng = random.Random(13)
    base = await make_offer()
    offers = [mutated_sdp_example(rng, base) for _ in range(examples(25, 300))]
    # Parses, but aiortc cannot apply it: AttributeError with no fingerprint and setup.
    lines = base.split("\r\n")
    offers.insert(0, "\r\n".join(x for x in lines if "fingerprint" not in x and "setup" not in x))
    refused = 0
    for sdp in offers:
        try:
            await room.room.handle_signal(
                "eve", {"type": "offer", "target_id": "sfu", "pc": "publish", "sdp": sdp}
            )
        except BadSignal:
            refused += 1
        except MediaError as exc:  # pragma: no cover - a wrong code would show here
            pytest.fail(f"{type(exc).__name__}: {exc}")
    assert refused > 0
    await room.flowing("ben", "ana")
    await room.flowing("ana", "ben")
    # And a real client can still join as eve.
    await room.join("eve")
    await room.flowing("eve", "ana")


def mutated_sdp_example(rng: random.Random, offer: str) -> str:
    """:func:`mutated_sdp`'s operations, seeded (no hypothesis inside an event loop)."""
    lines = offer.split("\r\n")
    junk = ["", " ", "x", "-1", "0", "99999999999", ":", "/", "a=b"]
    for _ in range(rng.randint(1, 4)):
        i = rng.randrange(len(lines))
        op = rng.randrange(5)
        if op == 0:
            del lines[i]
        elif op == 1:
            lines[i] = lines[i][: rng.randint(0, len(lines[i]))]
        elif op == 2:
            lines.insert(i, rng.choice(lines))
        elif op == 3:
            parts = lines[i].split(" ")
            parts[rng.randrange(len(parts))] = rng.choice(junk)
            lines[i] = " ".join(parts)
        else:
            key, _, _ = lines[i].partition(":")
            lines[i] = f"{key}:{rng.choice(junk)}"
    return "\r\n".join(lines)


# --- Huddle's own RTP layer (media.rtpheader, rtcp, payload, inbound, feedback) -----


@FUZZ
@given(data=st.one_of(st.binary(max_size=300), rtp_packets()))
@example(data=WRONG_SIZE_EXTENSIONS[0])
@example(data=WRONG_SIZE_EXTENSIONS[3])
def test_huddle_rtp_parser_raises_only_malformed_packet(data: bytes) -> None:
    from media.payload import h264_frame_start, h264_keyframe_start, parse_vp8
    from media.rtpheader import MalformedPacket, parse_rtp

    try:
        packet = parse_rtp(data)
    except MalformedPacket:
        return
    assert 12 <= packet.payload_start <= packet.payload_end <= len(data)
    # What forwarding reads of any payload never raises either.
    parse_vp8(data, packet.payload_start, packet.payload_end)
    h264_keyframe_start(data, packet.payload_start, packet.payload_end)
    h264_frame_start(data, packet.payload_start, packet.payload_end)


@FUZZ
@given(data=st.one_of(st.binary(max_size=300), rtp_packets()), level=st.integers(-1, 255))
@example(data=WRONG_SIZE_EXTENSIONS[0], level=-1)
def test_c_rtp_parser_matches_the_python_reference(data: bytes, level: int) -> None:
    """media._udpsend.parse_rtp / vp8_packet give what rtpheader / payload give, for any bytes."""
    from media import downstream, rtpheader, udpout

    if udpout._udpsend is None:
        pytest.skip("media._udpsend not built")
    c = udpout._udpsend.parse_rtp(data)
    py = rtpheader.py_parse_or_reason(data)
    if isinstance(py, str):
        assert c == py
        return
    assert not isinstance(c, str)
    fields = ("marker", "payload_type", "sequence_number", "timestamp", "ssrc")
    fields += ("payload_start", "payload_end", "extensions", "payload", "payload_size")
    for name in fields:
        assert getattr(c, name) == getattr(py, name), name
    assert c.data is data
    assert udpout._udpsend.vp8_packet(c, level) == downstream.py_vp8_packet(py, level)


_down_packets = st.tuples(
    st.integers(0, 0xFFFF),  # sequence number
    st.integers(0, 0xFFFFFFFF),  # timestamp
    st.booleans(),  # marker
    st.booleans(),  # keyframe
    st.integers(-1, 0x7FFF),  # picture id
    st.integers(-2, 8),  # its position (out of range: ignored)
    st.integers(-1, 255),  # TL0PICIDX
    st.integers(-2, 8),
    st.integers(-1, 255),  # audio level
    st.binary(max_size=40),  # payload
    st.sampled_from(["take", "take", "take", "switch", "flush", "unready"]),
)


@settings(FUZZ, max_examples=examples(100, 5_000))
@given(
    video=st.booleans(),
    ext=st.sampled_from(
        [
            (b"", -1, -1),
            (b"\xbe\xde\x00\x01" + bytes([0x12, 0, 0, 0]), 5, -1),  # abs-send-time
            (b"\xbe\xde\x00\x01" + bytes([0x10, 0x61, 0x20, 0]), -1, 7),  # mid, level
            (b"\xbe\xde\x00\x02" + bytes([0x10, 0x61, 0x32, 0, 0, 0, 0x40, 0]), 7, 11),
        ]
    ),
    steps=st.lists(_down_packets, max_size=30),
)
def test_c_fanout_matches_the_python_reference(
    video: bool, ext: tuple[bytes, int, int], steps: list[tuple[Any, ...]]
) -> None:
    """The C down and PyDown take the same packets and send the same bytes, for any input."""
    from media import downstream, udpout

    if downstream.C is None:
        pytest.skip("media._udpsend not built")
    template, abs_at, level_at = ext
    key = bytes(range(30))
    outputs = []
    sockets = []
    for impl in (downstream.C, downstream.PYTHON):
        policy = pylibsrtp.Policy(key=key, ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND)
        policy.allow_repeat_tx = True
        tx = pylibsrtp.Session(policy)
        rx = pylibsrtp.Session(
            pylibsrtp.Policy(key=key, ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND)
        )
        send = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        recv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        recv.bind(("127.0.0.1", 0))
        recv.setblocking(False)
        sockets += [send, recv]

        class _Transport:
            def get_extra_info(self, name: str, sock: socket.socket = send) -> Any:
                return sock

        out = udpout.DatagramOut(tx, _Transport(), recv.getsockname(), accelerated=impl.accelerated)
        down = impl.new_down(video, 3000)
        down.configure(0xABCDEF, 96, 0x90 if template else 0x80, template, abs_at, level_at,
                       65530, 4_000_000_000)  # fmt: skip
        impl.attach(down, out)
        down.ready = True
        taken = []
        for seq, ts, marker, key_, pid, pid_at, tl0, tl0_at, level, payload, action in steps:
            if action == "switch":
                down.switch()
            elif action == "flush":
                down.flush()
            elif action == "unready":
                down.ready = False
                down.ready = True
            data = bytes(12) + payload
            packet = (data, 12, len(data), seq, ts, marker, key_, pid, pid_at, tl0, tl0_at, level)
            taken.append(impl.forward([down], packet, marker))
        down.flush()
        received: list[bytes | None] = []
        while True:
            try:
                datagram = recv.recv(65536)
            except BlockingIOError:
                break
            try:
                plain = rx.unprotect(datagram)
            except pylibsrtp.Error:  # a repeated index: the same for both
                received.append(None)
                continue
            # abs-send-time differs by when each ran: blank it before comparing.
            if abs_at >= 0:
                at = 12 + abs_at
                plain = plain[:at] + bytes(3) + plain[at + 3 :]
            received.append(plain)
        outputs.append((taken, received, down.packets_sent, down.sequence_number, down.epoch))
        out.close()
    for sock in sockets:
        sock.close()
    assert outputs[0][0] == outputs[1][0]  # taken
    assert outputs[0][1] == outputs[1][1]  # sent
    assert outputs[0] == outputs[1]


class _Sink:
    def __init__(self) -> None:
        self.packets = 0

    def on_packet(self, packet: Any) -> None:
        self.packets += 1

    def repaired(self, nbytes: int) -> None:
        pass

    def request_keyframe(self) -> None:
        pass

    def sync(self) -> None:
        pass

    def layer(self, rid: str) -> Any:
        return self


class _Target:
    def __init__(self) -> None:
        self.resent: list[int] = []

    def resend(self, sequence_numbers: list[int]) -> int:
        self.resent += sequence_numbers
        return 0

    def keyframe_wanted(self) -> None:
        pass

    def reported(self, report: Any) -> None:
        assert (0 <= report.fraction_lost < 1 and report.rtt is None) or report.rtt >= 0


@settings(
    max_examples=examples(200, 3000),  # an event loop per example: fewer than FUZZ
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    packets=st.lists(st.one_of(rtp_packets(), st.binary(max_size=80)), max_size=20),
    compounds=st.lists(rtcp_compounds(), max_size=5),
)
def test_receive_path_and_feedback_take_anything(
    packets: list[bytes], compounds: list[bytes]
) -> None:
    """Publisher RTP/RTCP and subscriber RTCP of any shape: dropped and counted, never raised."""
    from media.feedback import SubscriberFeedback
    from media.inbound import MLine, PublisherInbound
    from media.metrics import CountingMediaMetrics
    from media.rtpheader import ExtensionIds
    from media.twcc import TwccRecorder

    async def run() -> None:
        inbound = PublisherInbound("fuzz", metrics=CountingMediaMetrics(), remb_bitrate=1_000_000)
        mline = MLine("0", "video", 90000, frozenset({96, 97}), {98: 96}, nack=True)
        inbound._mlines = {"0": mline}
        inbound.ids = ExtensionIds(mid=1, audio_level=6, transport_cc=7, abs_send_time=4)
        inbound._twcc_id = 7
        inbound._twcc = TwccRecorder()
        sink = _Sink()
        inbound.bind("0", sink)
        for data in packets:
            inbound._on_rtp(data)
        for data in compounds:
            inbound._on_rtcp(data)
        inbound._reports()  # receiver reports and REMB from whatever was counted
        while inbound._twcc.feedback(1, 2) is not None:  # and transport-cc feedback
            pass
        target = _Target()
        feedback = SubscriberFeedback("fuzz", lambda ssrc: target, metrics=CountingMediaMetrics())
        for data in compounds:
            feedback.handle(data)
        feedback.close()
        await inbound.close()

    asyncio.run(run())
