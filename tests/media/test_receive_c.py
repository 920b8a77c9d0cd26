"""The C receive path (media/_receive.c) against its Python reference, on any packets.

Two publish connections' receive paths are set up from one real aiortc
negotiation (VP8 with RTX and NACK, Opus with the audio level, transport-cc
as Chrome offers it): one takes its datagrams through the C ``Receiver``
and the up tracks' C ``Sink``s, the other through ``PublisherInbound._on_rtp``
and ``UpTrack.on_packet`` in Python. The same SRTP-protected packets go to
both, and everything either keeps must match: drops by reason, RTX
unwrapped, reception statistics, NACK state, transport-cc arrivals, what
each up track received and cached, the audio level counters (active speaker).
"""

from __future__ import annotations

import asyncio
import random
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pylibsrtp
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from media.aiortc_compat import accept_transport_cc
from media.forwarder import UpTrack
from media.inbound import PublisherInbound
from media.metrics import CountingMediaMetrics
from media.rtpheader import URI_TRANSPORT_CC
from media.udpout import ACCELERATED
from tests.reliability.scale import examples

pytestmark = pytest.mark.skipif(not ACCELERATED, reason="media._udpsend not built")

KEY = bytes(range(30))


@dataclass
class Negotiated:
    server: RTCPeerConnection
    client: RTCPeerConnection
    video_ssrc: int
    rtx_ssrc: int
    video_pt: int
    rtx_pt: int
    audio_ssrc: int
    audio_pt: int
    twcc_id: int
    level_id: int


async def _negotiate() -> Negotiated:
    client = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    server = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    client.addTransceiver("audio", direction="sendonly")
    client.addTransceiver("video", direction="sendonly")
    await client.setLocalDescription(await client.createOffer())
    offer = client.localDescription.sdp
    video_pt = int(re.findall(r"a=rtpmap:(\d+) VP8/90000", offer)[0])
    # What Chrome offers on top of aiortc's offer.
    offer = offer.replace(
        f"a=rtpmap:{video_pt} VP8/90000\r\n",
        f"a=rtpmap:{video_pt} VP8/90000\r\na=rtcp-fb:{video_pt} transport-cc\r\n",
    )
    video_at = offer.index("m=video")
    offer = offer[:video_at] + offer[video_at:].replace(
        "a=mid:", f"a=extmap:5 {URI_TRANSPORT_CC}\r\na=mid:", 1
    )
    await server.setRemoteDescription(RTCSessionDescription(offer, "offer"))
    accept_transport_cc(server, URI_TRANSPORT_CC)
    await server.setLocalDescription(await server.createAnswer())
    answer = server.localDescription.sdp
    fid = re.search(r"a=ssrc-group:FID (\d+) (\d+)", offer)
    assert fid is not None
    audio_section = offer[: offer.index("m=video")]
    audio_ssrc = re.search(r"a=ssrc:(\d+) ", audio_section)
    level = re.search(r"a=extmap:(\d+) urn:ietf:params:rtp-hdrext:ssrc-audio-level", answer)
    assert audio_ssrc is not None and level is not None
    return Negotiated(
        server=server,
        client=client,
        video_ssrc=int(fid.group(1)),
        rtx_ssrc=int(fid.group(2)),
        video_pt=video_pt,
        rtx_pt=int(re.findall(r"a=rtpmap:(\d+) rtx/90000", offer)[0]),
        audio_ssrc=int(audio_ssrc.group(1)),
        audio_pt=int(re.findall(r"a=rtpmap:(\d+) opus/48000", offer)[0]),
        twcc_id=5,
        level_id=int(level.group(1)),
    )


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop

    async def cancel_leftovers() -> None:  # what closed connections left (aiortc's connect)
        pending = asyncio.all_tasks() - {asyncio.current_task()}
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    loop.run_until_complete(cancel_leftovers())
    loop.close()


@pytest.fixture(scope="module")
def negotiated(loop: asyncio.AbstractEventLoop) -> Iterator[Negotiated]:
    n = loop.run_until_complete(_negotiate())
    yield n
    loop.run_until_complete(n.client.close())
    loop.run_until_complete(n.server.close())


class Side:
    """One publish connection's receive path and its two up tracks."""

    def __init__(self, n: Negotiated, accelerated: bool) -> None:
        self.inbound = PublisherInbound(
            "c" if accelerated else "py",
            metrics=CountingMediaMetrics(),
            remb_bitrate=0,
            accelerated=accelerated,
        )
        self.inbound._send = lambda packet: True  # type: ignore[method-assign]
        self.inbound.configure(n.server)
        self.ups = [
            UpTrack(
                "pub",
                transceiver,
                self.inbound,
                pli_min_interval=0.5,
                metrics=CountingMediaMetrics(),
                on_ended=lambda up: None,
            )
            for transceiver in n.server.getTransceivers()
        ]
        self.rx = pylibsrtp.Session(
            pylibsrtp.Policy(key=KEY, ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND)
        )

    def feed(self, datagram: bytes) -> None:
        self.inbound._on_srtp(self.rx, datagram)

    def state(self) -> dict[str, Any]:
        inbound = self.inbound
        inbound._take_twcc()
        streams = {}
        for ssrc, stream in inbound._streams.items():
            stats, nack = stream.stats, stream.nack
            streams[ssrc] = (
                stats.packets,
                stats.bytes,
                stats.base_seq,
                stats.max_seq,
                stats.cycles,
                None if nack is None else (sorted(nack._missing), nack.gave_up, nack.recovered),
            )
        ups = []
        for up in self.ups:
            cache = up.cache
            cached = None
            if cache is not None:
                cached = (
                    cache.newest_seq,
                    cache.keyframe_seq,
                    [cache.get(seq) for seq in range(0, 0x10000, 1)],
                )
            sizes = [(layer.bytes_in, layer.rtx_bytes_in, layer.size) for layer in up.layers()]
            ups.append((up.kind, up.packets_in, cached, up.take_audio_levels(), sizes))
        twcc = inbound._twcc
        return {
            "dropped": inbound.dropped,
            "rtx": inbound.rtx_packets,
            "streams": streams,
            "ups": ups,
            "twcc": None if twcc is None else sorted(twcc._arrivals),
            "nack_soon": inbound._nack_soon,
        }

    async def close(self) -> None:
        for up in self.ups:
            await up.close()
        await self.inbound.close()


# One packet: (stream, payload type, sequence step, marker, payload, extensions, padding)
_packets = st.tuples(
    st.sampled_from(["video", "video", "video", "rtx", "audio", "audio", "unknown"]),
    st.sampled_from(["media", "media", "media", "rtx", "other"]),
    st.sampled_from([1, 1, 1, 1, 2, 3, 0, -1, -2, 40, 600, 30000]),
    st.booleans(),
    st.one_of(
        st.binary(max_size=24),
        st.sampled_from(
            [
                b"\x90\xe0\x12\x34\x56\x00",
                b"\x10\x00\x9d\x01\x2a",
                b"\x80\x80",
                b"\x10\x00\x00\x00\x9d\x01\x2a\x80\x02\xe0\x01",  # a 640x480 keyframe
                b"\x90\x80\x81\x02\x10\x00\x00\x9d\x01\x2a\x40\x01\xf0\x00",
            ]
        ),
    ),
    st.sampled_from(["none", "twcc", "level", "both", "short_twcc", "bad", "two_byte", "other"]),
    st.sampled_from([0, 0, 0, 1, 4, 255]),
)


def _build(n: Negotiated, packet: tuple[Any, ...], seqs: dict[str, int], twseq: list[int]) -> bytes:
    stream, pt_kind, step, marker, payload, ext, padding = packet
    ssrc = {
        "video": n.video_ssrc,
        "rtx": n.rtx_ssrc,
        "audio": n.audio_ssrc,
        "unknown": 0xDEADBEEF,
    }[stream]
    media_pt = n.audio_pt if stream == "audio" else n.video_pt
    pt = {"media": media_pt, "rtx": n.rtx_pt, "other": 55}[pt_kind]
    seq = seqs[stream] = (seqs.get(stream, 1000) + step) & 0xFFFF
    if stream == "rtx":
        payload = struct.pack("!H", (seqs.get("video", 1000) - step) & 0xFFFF) + payload
    twseq[0] = (twseq[0] + 1) & 0xFFFF
    tw = bytes([(n.twcc_id << 4) | 1]) + struct.pack("!H", twseq[0])
    level = bytes([n.level_id << 4, 0x80 | (seq % 128)])
    elements = {
        "none": None,
        "twcc": tw,
        "level": level,
        "both": tw + level,
        "short_twcc": bytes([n.twcc_id << 4, 7]),
        "bad": bytes([0x3F, 1, 2]),  # an element overrunning its block
        "two_byte": b"",
        "other": bytes([0x70, 9]),
    }[ext]
    header = bytearray(
        struct.pack("!BBHII", 0x80, (0x80 if marker else 0) | pt, seq, seq * 3000, ssrc)
    )
    if ext == "two_byte":
        body = bytes([n.twcc_id, 2]) + struct.pack("!H", twseq[0]) + bytes([n.level_id, 1, 0x85])
        body += bytes(-len(body) % 4)
        header[0] |= 0x10
        header += struct.pack("!HH", 0x1000, len(body) // 4) + body
    elif elements is not None:
        body = elements + bytes(-len(elements) % 4)
        words = len(body) // 4 if ext != "bad" else 1
        header[0] |= 0x10
        header += struct.pack("!HH", 0xBEDE, words) + body[: words * 4]
    data = bytes(header) + payload
    if padding:
        header[0] |= 0x20
        pad = bytes(max(0, padding - 1)) + bytes([padding])
        if padding == 255:
            pad = bytes([200])  # a padding count past the packet: malformed
        data = bytes([header[0]]) + data[1:] + pad
    return data


@settings(
    max_examples=examples(60, 2_000),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(packets=st.lists(_packets, max_size=40), seed=st.integers(0, 2**32 - 1))
def test_c_receive_path_matches_the_python_reference(
    loop: asyncio.AbstractEventLoop,
    negotiated: Negotiated,
    packets: list[tuple[Any, ...]],
    seed: int,
) -> None:
    async def run() -> tuple[dict[str, Any], dict[str, Any]]:
        sides = [Side(negotiated, accelerated=True), Side(negotiated, accelerated=False)]
        assert sides[0].inbound.accelerated and not sides[1].inbound.accelerated
        policy = pylibsrtp.Policy(key=KEY, ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND)
        policy.allow_repeat_tx = True
        tx = pylibsrtp.Session(policy)
        rng = random.Random(seed)
        seqs: dict[str, int] = {}
        twseq = [0]
        try:
            for packet in packets:
                datagram = tx.protect(_build(negotiated, packet, seqs, twseq))
                if rng.random() < 0.05:  # damaged on the way: refused by libsrtp
                    datagram = datagram[:-1] + bytes([datagram[-1] ^ 1])
                for side in sides:
                    side.feed(datagram)
            return sides[0].state(), sides[1].state()
        finally:
            for side in sides:
                await side.close()

    c, py = loop.run_until_complete(run())
    for key in py:
        assert c[key] == py[key], key


def test_the_room_path_takes_the_common_case_in_c(
    loop: asyncio.AbstractEventLoop, negotiated: Negotiated
) -> None:
    """In-order VP8 and Opus with their extensions never reach Python's receive path."""

    async def run() -> None:
        side = Side(negotiated, accelerated=True)
        policy = pylibsrtp.Policy(key=KEY, ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND)
        tx = pylibsrtp.Session(policy)
        seqs: dict[str, int] = {}
        twseq = [0]
        try:
            for i in range(50):
                stream = "audio" if i % 3 == 0 else "video"
                packet = (stream, "media", 1, i % 4 == 3, b"\x10\x00\x9d\x01\x2a", "both", 0)
                side.feed(tx.protect(_build(negotiated, packet, seqs, twseq)))
            c = side.inbound._c
            assert c is not None
            assert c.slow_packets <= 2  # the first packet of each stream, before it was known
            assert c.fast_packets >= 48
            video, audio = (next(u for u in side.ups if u.kind == k) for k in ("video", "audio"))
            assert video.packets_in + audio.packets_in == 50
            assert video.cache is not None and video.cache.keyframe_seq is not None
            assert audio.fast_sink is not None
            packets, _, _ = audio.fast_sink.take_levels()
            assert packets >= 15  # every audio packet carried a level
        finally:
            await side.close()

    loop.run_until_complete(run())
