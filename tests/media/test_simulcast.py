"""Simulcast on the SFU: negotiation, layers learnt by rid, one continuous stream per subscriber.

Negotiation is real (an aiortc offer made to look like Chrome's simulcast
offer: ``a=rid`` lines, ``a=simulcast:send``, the rid extensions, no SSRCs);
packets are SRTP-protected and go through the production receive path (C
when built); the subscriber is a real ``FastRtp`` sending over loopback UDP
with real SRTP (tests/media/test_forwarding.py's ``Wire``), read back with
aiortc's RTP parser.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pylibsrtp
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from media.aiortc_compat import accept_header_extensions
from media.allocator import PAUSED
from media.forwarder import DownTrack, UpTrack
from media.inbound import PublisherInbound
from media.layer import PACKET_OVERHEAD
from media.metrics import CountingMediaMetrics
from media.rtcp import iter_rtcp
from media.rtpheader import URI_MID, URI_REPAIRED_RID, URI_RID
from media.simulcast import answer_layers, offered_layers
from tests.media.conftest import Call
from tests.media.test_forwarding import _fast, implementation, picture_id, sent
from tests.support.polling import eventually

__all__ = ["implementation"]  # the fixture, imported for pytest

KEY = bytes(range(30))
RID_ID, RRID_ID = 10, 11
SSRCS = {"q": 0x1000, "h": 0x2000, "f": 0x3000}
SIZES = {"q": (320, 180), "h": (640, 360), "f": (1280, 720)}

CHROME_LIKE = (
    "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
    "m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:0\r\na=sendonly\r\n"
    "a=rid:q send\r\na=rid:h send\r\na=rid:f send max-width=1280\r\na=rid:x recv\r\n"
    "a=simulcast:send q;h;~f,z\r\n"
    "m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:1\r\na=rid:only send\r\na=simulcast:send only\r\n"
    "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:2\r\na=rid:q send\r\na=simulcast:send q;h\r\n"
)


def test_offered_layers_read_rids_in_simulcast_order() -> None:
    # Alternatives: the first; "~" (paused) kept; a single layer or audio: not simulcast.
    assert offered_layers(CHROME_LIKE) == {"0": ("q", "h", "f")}
    assert offered_layers("v=0\r\n") == {}
    assert offered_layers("m=video 9 X 96\r\na=mid:0\r\na=simulcast:send ;;;\r\n") == {}


def test_answer_layers_adds_rid_recv_and_simulcast_recv() -> None:
    answer = (
        "v=0\r\ns=-\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:0\r\na=recvonly\r\n"
        "m=video 0 UDP/TLS/RTP/SAVPF 96\r\na=mid:1\r\n"
    )
    out = answer_layers(answer, {"0": ("q", "h", "f"), "1": ("a", "b")})
    first, rejected = out.split("m=video")[1:]
    assert "a=rid:q recv\r\na=rid:h recv\r\na=rid:f recv\r\na=simulcast:recv q;h;f\r\n" in first
    assert "a=rid" not in rejected  # a rejected m-line stays as it was
    assert out.endswith("\r\n") and "\r\n\r\n" not in out
    assert answer_layers(answer, {}) == answer


@dataclass
class Publish:
    server: RTCPeerConnection
    client: RTCPeerConnection
    inbound: PublisherInbound
    up: UpTrack
    answer: str
    mid_id: int
    pt: int
    upstream: list[bytes]
    metrics: CountingMediaMetrics


@pytest.fixture
async def publish() -> AsyncIterator[Publish]:
    client = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    server = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    client.addTransceiver("video", direction="sendonly")
    await client.setLocalDescription(await client.createOffer())
    lines = [
        line
        for line in client.localDescription.sdp.split("\r\n")
        if not line.startswith(("a=ssrc:", "a=ssrc-group:"))  # browsers don't signal them
    ]
    at = next(i for i, line in enumerate(lines) if line.startswith("a=mid:"))
    lines[at + 1 : at + 1] = [
        f"a=extmap:{RID_ID} {URI_RID}",
        f"a=extmap:{RRID_ID} {URI_REPAIRED_RID}",
        "a=rid:q send",
        "a=rid:h send",
        "a=rid:f send",
        "a=simulcast:send q;h;f",
    ]
    offer = "\r\n".join(lines)
    await server.setRemoteDescription(RTCSessionDescription(offer, "offer"))
    assert accept_header_extensions(server, (URI_RID, URI_REPAIRED_RID)) == ["0"]
    await server.setLocalDescription(await server.createAnswer())
    answer = answer_layers(server.localDescription.sdp, offered_layers(offer))
    metrics = CountingMediaMetrics()
    inbound = PublisherInbound("pub", metrics=metrics, remb_bitrate=0)
    upstream: list[bytes] = []

    def capture(packet: bytes) -> bool:
        upstream.append(packet)
        return True

    inbound._send = capture  # type: ignore[method-assign]
    inbound.configure(server, offered_layers(offer))
    (transceiver,) = server.getTransceivers()
    up = UpTrack(
        "pub", transceiver, inbound, pli_min_interval=0.0, metrics=metrics, on_ended=lambda u: None
    )
    mid = re.search(rf"a=extmap:(\d+) {URI_MID}", answer)
    pt = re.search(r"a=rtpmap:(\d+) VP8/90000", answer)
    assert mid is not None and pt is not None
    yield Publish(server, client, inbound, up, answer, int(mid.group(1)), int(pt.group(1)),
                  upstream, metrics)  # fmt: skip
    await up.close()
    await inbound.close()
    await client.close()
    await server.close()


class Publisher:
    """Sends three layers' VP8 packets (with mid and rid extensions) through SRTP."""

    def __init__(self, p: Publish) -> None:
        self.p = p
        policy = pylibsrtp.Policy(key=KEY, ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND)
        self.tx = pylibsrtp.Session(policy)
        self.rx = pylibsrtp.Session(
            pylibsrtp.Policy(key=KEY, ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND)
        )
        self.seq = {rid: 100 * i for i, rid in enumerate(SSRCS)}
        self.pid = {rid: 1000 * i for i, rid in enumerate(SSRCS)}
        self.ts = {rid: 10_000_000 * i for i, rid in enumerate(SSRCS)}

    def frame(self, rid: str, *, key: bool = False, packets: int = 2) -> list[bytes]:
        """One frame of layer ``rid``: its payloads as sent (to compare with what arrives)."""
        self.pid[rid] = (self.pid[rid] + 1) & 0x7FFF
        self.ts[rid] += 3000
        payloads = []
        for i in range(packets):
            self.seq[rid] = (self.seq[rid] + 1) & 0xFFFF
            ext = (
                bytes([(self.p.mid_id << 4) | 0]) + b"0" + bytes([(RID_ID << 4) | 0]) + rid.encode()
            )
            ext += bytes(-len(ext) % 4)
            marker = i == packets - 1
            header = struct.pack(
                "!BBHII", 0x90, (0x80 if marker else 0) | self.p.pt, self.seq[rid], self.ts[rid],
                SSRCS[rid],
            )  # fmt: skip
            header += struct.pack("!HH", 0xBEDE, len(ext) // 4) + ext
            pid = self.pid[rid]
            desc = bytes([0x90 if i == 0 else 0x80, 0x80, 0x80 | (pid >> 8), pid & 0xFF])
            if key and i == 0:  # a keyframe's payload header: its frame size (RFC 6386 9.1)
                width, height = SIZES[rid]
                body = b"\x00\x00\x00\x9d\x01\x2a" + struct.pack("<HH", width, height)
            else:
                body = b"\x01"
            body += rid.encode() * 20
            payloads.append(desc + body)
            self.p.inbound._on_srtp(self.rx, self.tx.protect(header + desc + body))
        return payloads


def plis(p: Publish) -> list[int]:
    """The media SSRCs the SFU asked keyframes of."""
    out = []
    for packet in p.upstream:
        for packet_type, fmt, body in iter_rtcp(packet):
            if packet_type == 206 and fmt == 1:
                out.append(int.from_bytes(body[8:12], "big"))
    return out


@pytest.mark.usefixtures("implementation")
async def test_a_subscriber_gets_one_continuous_stream_across_layer_switches(
    publish: Publish,
) -> None:
    assert "a=simulcast:recv q;h;f" in publish.answer
    assert f"a=extmap:{RID_ID} {URI_RID}" in publish.answer
    up, inbound = publish.up, publish.inbound
    assert up.rids == ("q", "h", "f")
    pub = Publisher(publish)
    fast, ext_map = _fast()
    down = DownTrack("video", publish.metrics)
    down.sender, fast.down = fast, down

    # Only the lowest layer arrives at first: learnt by its rid, the subscriber starts on it.
    cached = pub.frame("q", key=True)
    assert {s.rid for s in inbound._streams.values()} == {"q"}
    down.attach(up)  # starts from the layer's cached keyframe
    assert up.layer_of(down) is up.layer("q")
    first = pub.frame("q", key=True)
    assert [p.payload[4:] for p in sent(fast, ext_map)] == [c[4:] for c in cached + first]

    # The upper layers start (delta frames): at the next tick the subscriber is
    # to move to "f", at a keyframe of "f" (asked for); until then it stays on "q".
    pub.frame("h")
    pub.frame("f")
    assert {s.rid for s in inbound._streams.values()} == {"q", "h", "f"}
    up.sync()
    await eventually(lambda: SSRCS["f"] in plis(publish), message="a PLI for layer f")
    before = sent(fast, ext_map)
    still_q = pub.frame("q")
    pub.frame("f")  # a delta frame of "f": no switch yet
    on_q = sent(fast, ext_map)
    assert [p.payload[4:] for p in on_q] == [c[4:] for c in still_q]  # no freeze meanwhile
    assert up.layer_of(down) is up.layer("q")

    # The keyframe of "f": from here on the subscriber gets "f", numbering continuing.
    key_f = pub.frame("f", key=True)
    pub.frame("q")
    delta_f = pub.frame("f")
    after = sent(fast, ext_map)
    assert [p.payload[4:] for p in after] == [k[4:] for k in key_f + delta_f]
    assert up.layer_of(down) is up.layer("f")
    stream = before + on_q + after
    seqs = [p.sequence_number for p in stream]
    assert all((b - a) & 0xFFFF == 1 for a, b in itertools.pairwise(seqs))
    assert len({p.ssrc for p in stream}) == 1
    pids = [picture_id(p) for p in on_q[::2] + after[::2]]
    assert all((b - a) & 0x7FFF == 1 for a, b in itertools.pairwise(pids))
    stamps = [p.timestamp for p in on_q[-1:] + after]
    assert all(0 <= (b - a) & 0xFFFFFFFF < 90_000 for a, b in itertools.pairwise(stamps))

    # "f" stops arriving: the subscriber moves down to "h" at its keyframe.
    pub.frame("h")
    up.sync()  # "f" had packets since the last tick
    pub.frame("h")
    up.sync()  # now it had none
    await eventually(lambda: SSRCS["h"] in plis(publish), message="a PLI for layer h")
    assert up.layer_of(down) is up.layer("f")
    key_h = pub.frame("h", key=True)
    down_h = sent(fast, ext_map)
    assert [p.payload[4:] for p in down_h] == [k[4:] for k in key_h]
    assert up.layer_of(down) is up.layer("h")
    counts = publish.metrics.counts
    assert counts["layer_switch_up"] == 1 and counts["layer_switch_down"] == 1

    # A cap keeps a subscriber at or under a layer (what it renders, its bandwidth).
    up.set_max_layer(down, 0)
    pub.frame("q")
    pub.frame("h")
    up.sync()
    assert up.layer("q").pending == [down]
    pub.frame("q", key=True)
    assert up.layer_of(down) is up.layer("q")
    down.detach()
    assert not any(layer.pending for layer in up.layers())


def _rtx(p: Publish, pub: Publisher, rid: str, seq: int, rtx_seq: int, payload: bytes) -> None:
    """An RTX packet (RFC 4588) of layer ``rid``'s packet ``seq``, on SSRC 0x7777."""
    inbound = p.inbound
    rtx_pt = next(pt for pt, apt in inbound._mlines["0"].rtx_apt.items() if apt == p.pt)
    ext = bytes([(p.mid_id << 4) | 0]) + b"0" + bytes([(RRID_ID << 4) | 0]) + rid.encode()
    ext += bytes(-len(ext) % 4)
    header = struct.pack("!BBHII", 0x90, rtx_pt, rtx_seq, pub.ts[rid], 0x7777)
    header += struct.pack("!HH", 0xBEDE, len(ext) // 4) + ext
    inbound._on_srtp(pub.rx, pub.tx.protect(header + struct.pack("!H", seq) + payload))


async def test_rtx_of_a_layer_is_placed_by_its_repaired_rid(publish: Publish) -> None:
    up, inbound = publish.up, publish.inbound
    pub = Publisher(publish)
    pub.frame("h", key=True)
    _rtx(publish, pub, "h", (pub.seq["h"] + 1) & 0xFFFF, 7, b"\x90")  # one not received yet
    assert inbound._rtx[0x7777] is inbound._streams[SSRCS["h"]]
    assert inbound.rtx_packets == 1
    assert up.layer("h").packets_in == 3


@pytest.mark.usefixtures("implementation")
async def test_a_retransmission_of_a_packet_already_received_is_not_forwarded(
    publish: Publish,
) -> None:
    """Chrome probes its uplink with RTX copies of packets the SFU had (measured: up
    to ~1 Mbit/s of them on the lowest layer); its subscribers had them too."""
    up, pub = publish.up, Publisher(publish)
    fast, ext_map = _fast()
    down = DownTrack("video", publish.metrics)
    down.sender, fast.down = fast, down
    pub.frame("q", key=True)
    down.attach(up)
    first = pub.frame("q")
    layer = up.layer("q")
    assert [p.payload[4:] for p in sent(fast, ext_map)][-2:] == [f[4:] for f in first]
    packets, nbytes, rtx_bytes = layer.packets_in, layer.bytes_in, layer.rtx_bytes_in

    # Copies of both packets of the frame just forwarded: dropped, counted.
    seqs = ((pub.seq["q"] - 1) & 0xFFFF, pub.seq["q"])
    for rtx_seq, (seq, payload) in enumerate(zip(seqs, first, strict=True), 1):
        _rtx(publish, pub, "q", seq, rtx_seq, payload)
    up.sync()
    assert sent(fast, ext_map) == []
    assert layer.duplicates == 2
    assert publish.metrics.counts["dropped_duplicate"] == 2
    assert layer.keyframes_in == 1 and publish.metrics.counts["keyframes_layer_0"] == 1
    assert (layer.packets_in, layer.bytes_in, layer.rtx_bytes_in) == (packets, nbytes, rtx_bytes)

    # A packet lost on the way and repaired is forwarded, once.
    pub.seq["q"] = (pub.seq["q"] + 1) & 0xFFFF  # its number: never arrived
    lost = pub.seq["q"]
    after = pub.frame("q")
    sent(fast, ext_map)
    repair = b"\x80\x80" + after[0][2:]
    _rtx(publish, pub, "q", lost, 3, repair)
    _rtx(publish, pub, "q", lost, 4, repair)  # and again: a duplicate now
    up.sync()
    (repaired,) = sent(fast, ext_map)
    assert repaired.payload == repair
    assert layer.duplicates == 3
    assert layer.rtx_bytes_in == rtx_bytes + len(repair)


def _measure(up: UpTrack, pub: Publisher, rates: tuple[float, ...]) -> None:
    """Give each layer the bit rate ``rates`` says, over synthetic time (Layer.tick)."""
    for layer in up.layers():
        layer.tick(0.0)
    before = [(layer.bytes_in, layer.packets_in) for layer in up.layers()]
    for rid in SSRCS:
        pub.frame(rid)
    for layer, (start, packets), rate in zip(up.layers(), before, rates, strict=True):
        cost = layer.bytes_in - start + PACKET_OVERHEAD * (layer.packets_in - packets)
        layer.tick(cost * 8 / rate)


async def test_a_layers_cost_ignores_a_tick_of_keyframes_but_follows_a_lasting_change(
    publish: Publish,
) -> None:
    up, pub = publish.up, Publisher(publish)
    layer = up.layer("q")
    at = 0.0

    def tick(frames: int) -> float:
        """One tick (1 s) over which ``frames`` packets of ``q`` arrived; its rate."""
        nonlocal at
        start, packets = layer.bytes_in, layer.packets_in
        for _ in range(frames):
            pub.frame("q")
        at += 1.0
        layer.tick(at)
        # Payload and, per packet, what forwarding it adds.
        return (layer.bytes_in - start + PACKET_OVERHEAD * (layer.packets_in - packets)) * 8.0

    layer.tick(at)
    steady = tick(10)
    assert tick(10) == tick(10) == steady and layer.cost == steady
    burst = tick(30)  # the keyframes subscribers' switches asked for: 3 times the bytes
    assert burst == 3 * steady and layer.cost == steady
    tick(10)
    tick(10)
    assert layer.cost == steady  # the burst never counted
    doubled = tick(20)  # the encoder doubled its rate: it counts from the second tick
    assert layer.cost == steady
    tick(20)
    assert layer.cost == doubled == 2 * steady


async def test_the_subscriber_estimate_picks_its_layer_and_pauses_when_nothing_fits(
    publish: Publish,
) -> None:
    from media import adaptation as adapt
    from media.adaptation import SubscriberAdaptation
    from media.feedback import SubscriberFeedback
    from media.rtcp import remb
    from media.subscription import Slot

    up, metrics = publish.up, publish.metrics
    pub = Publisher(publish)
    for rid in SSRCS:
        pub.frame(rid, key=True)
    _measure(up, pub, (150_000, 500_000, 1_500_000))
    subscriber = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    slot = Slot(subscriber, up, metrics)
    await subscriber.setLocalDescription(await subscriber.createOffer())  # gives it a mid
    feedback = SubscriberFeedback("sub", lambda ssrc: None, metrics=metrics)
    told: list[dict[str, object]] = []

    async def send(message: dict[str, object]) -> None:
        told.append(message)

    now = [100.0]
    adaptation = SubscriberAdaptation(
        "sub", feedback, lambda: [slot], send, metrics=metrics, clock=lambda: now[0]
    )

    def estimate(bits: int) -> None:
        feedback.handle(remb(1, bits, [SSRCS["f"]]))
        feedback.remb_at = now[0]

    try:
        await adaptation.tick()  # no estimate yet: the top layer
        assert up.layer_of(slot.down) is up.layer("f")
        (quality,) = told
        assert quality["type"] == "quality"
        assert quality["tracks"] == [
            {"mid": slot.transceiver.mid, "participant_id": "pub", "kind": "video",
             "layer": "f", "paused": False}
        ]  # fmt: skip

        # 700 kbit/s: room for the middle layer, taken at its keyframe.
        estimate(700_000)
        await adaptation.tick()
        assert up.layer("h").pending == [slot.down]
        pub.frame("h", key=True)
        assert up.layer_of(slot.down) is up.layer("h")
        await adaptation.tick()
        assert told[-1]["tracks"][0]["layer"] == "h"  # type: ignore[index]

        # 100 kbit/s: not even the lowest layer. The lowest layer at first (an
        # estimate can dip after an overshoot), video paused if it lasts.
        estimate(100_000)
        await adaptation.tick()
        assert not up.paused(slot.down)
        assert up.layer("q").pending == [slot.down]
        now[0] += adapt.PAUSE_AFTER
        estimate(100_000)
        await adaptation.tick()
        assert up.paused(slot.down) and up.layer_of(slot.down) is None
        assert told[-1]["tracks"][0]["paused"] is True  # type: ignore[index]
        sent_before = slot.fast.packets_sent
        pub.frame("h", key=True)
        assert slot.fast.packets_sent == sent_before  # nothing forwarded while paused

        # Plenty again: resumed on the lowest layer (its keyframe comes soonest)...
        now[0] += 0.5
        estimate(5_000_000)
        await adaptation.tick()
        pub.frame("q", key=True)
        assert not up.paused(slot.down) and up.layer_of(slot.down) is up.layer("q")
        assert told[-1]["tracks"][0] == {  # type: ignore[index]
            "mid": slot.transceiver.mid, "participant_id": "pub", "kind": "video",
            "layer": "q", "paused": False,
        }  # fmt: skip
        assert metrics.counts["layer_switch_pause"] == 1
        assert metrics.counts["layer_switch_resume"] == 1
        # ... and up to the top layer once the hold after the move down is over.
        now[0] += adapt.UP_HOLD
        await adaptation.tick()
        pub.frame("f", key=True)
        assert up.layer_of(slot.down) is up.layer("f")

        # A 320x180 tile needs no more than the lowest layer (sizes read from keyframes).
        assert [layer.size for layer in up.layers()] == list(SIZES.values())
        adaptation.set_view(str(slot.transceiver.mid), 320, 180, True)
        await adaptation.tick()
        pub.frame("q", key=True)
        assert up.layer_of(slot.down) is up.layer("q")
        now[0] += adapt.UP_HOLD  # the move down for the 100 kbit/s estimate is long past
        adaptation.set_view(str(slot.transceiver.mid), 1000, 560, True)
        await adaptation.tick()
        pub.frame("f", key=True)
        assert up.layer_of(slot.down) is up.layer("f")
        adaptation.set_view(str(slot.transceiver.mid), None, None, False)  # hidden
        await adaptation.tick()
        assert up.paused(slot.down)
    finally:
        await adaptation.close()
        slot.close()
        await subscriber.close()


async def test_going_back_up_is_tried_one_step_at_a_time_with_backoff(publish: Publish) -> None:
    """A receiver's REMB cannot rise far above what it gets: the SFU tries a step up."""
    from media import adaptation as adapt
    from media.adaptation import SubscriberAdaptation
    from media.feedback import SubscriberFeedback
    from media.rtcp import remb
    from media.subscription import Slot

    up, metrics = publish.up, publish.metrics
    pub = Publisher(publish)
    for rid in SSRCS:
        pub.frame(rid, key=True)
    _measure(up, pub, (150_000, 500_000, 1_500_000))
    subscriber = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    slot = Slot(subscriber, up, metrics)
    await subscriber.setLocalDescription(await subscriber.createOffer())
    feedback = SubscriberFeedback("sub", lambda ssrc: None, metrics=metrics)
    now = [100.0]

    async def send(message: dict[str, object]) -> None:
        pass

    adaptation = SubscriberAdaptation(
        "sub", feedback, lambda: [slot], send, metrics=metrics, clock=lambda: now[0]
    )

    def estimate(bits: int) -> None:
        feedback.handle(remb(1, bits, [SSRCS["f"]]))
        feedback.remb_at = now[0]

    def layer() -> str | None:
        pending = [layer.rid for layer in up.layers() if slot.down in layer.pending]
        if pending:  # the switch completes at the layer's keyframe
            pub.frame(pending[0], key=True)
        current = up.layer_of(slot.down)
        return current.rid if current is not None else None

    try:
        estimate(200_000)  # congested: down to the lowest layer
        await adaptation.tick()
        assert layer() == "q"
        assert adaptation._up_after == 2 * adapt.UP_AFTER  # congestion: wait longer
        for _ in range(int(2 * adapt.UP_AFTER / 0.5) - 1):
            now[0] += 0.5
            estimate(225_000)  # 1.5x what it gets: all a receiver can say
            await adaptation.tick()
            assert layer() == "q"
        now[0] += 0.5
        estimate(225_000)
        await adaptation.tick()  # steady long enough: one step up is tried
        assert layer() == "h"
        now[0] += 0.5
        estimate(300_000)  # and it did not fit: back down, and the next try waits longer
        await adaptation.tick()
        assert layer() == "q"
        assert adaptation._up_after == 4 * adapt.UP_AFTER
        now[0] += 2 * adapt.UP_AFTER + 0.5
        estimate(225_000)  # (a receiver sends one about every second)
        await adaptation.tick()
        assert layer() == "q"  # not yet: backed off
        now[0] += 2 * adapt.UP_AFTER
        estimate(225_000)
        await adaptation.tick()
        assert layer() == "h"
        now[0] += adapt.TRIAL + 0.5
        estimate(800_000)  # this time it held
        await adaptation.tick()
        assert adaptation._up_after == adapt.UP_AFTER  # held: the next try comes soon again
        assert layer() in ("h", "f")
    finally:
        await adaptation.close()
        slot.close()
        await subscriber.close()


async def test_a_hidden_tile_gets_no_video_and_a_shown_one_gets_it_back(call: Call) -> None:
    """track_settings through the room: the subscriber's view caps what it is sent."""
    await call.join("ana")
    ben = await call.join("ben")
    slot = next(s for s in call.room.participants["ben"]._slots if s.kind == "video")
    await eventually(lambda: slot.fast.packets_sent > 10, message="ben receives ana's video")
    mid = slot.transceiver.mid
    assert mid is not None
    await call.room.handle_signal(
        "ben", {"type": "track_settings", "tracks": [{"mid": mid, "visible": False}]}
    )
    up = slot.source
    assert up is not None
    await eventually(lambda: up.paused(slot.down), message="video paused for the hidden tile")
    sent = slot.fast.packets_sent
    frames = ben.received_from("ana", "video")
    assert frames is not None
    received, arrived = frames.frames, up.packets_in
    await eventually(lambda: up.packets_in > arrived + 30, message="ana still sends")
    assert slot.fast.packets_sent == sent  # nothing for the hidden tile
    await call.room.handle_signal(
        "ben", {"type": "track_settings", "tracks": [{"mid": mid, "visible": True}]}
    )
    await eventually(lambda: frames.frames > received + 10, message="video back")
    quality = [m for p, m in call.signaling.sent if p == "ben" and m.get("type") == "quality"]
    assert any(t["paused"] for m in quality for t in m["tracks"])
    assert not any(t["paused"] for t in quality[-1]["tracks"])


async def test_dynacast_asks_the_publisher_for_the_layers_subscribers_may_get(
    publish: Publish,
) -> None:
    asked: list[list[str]] = []
    (transceiver,) = publish.server.getTransceivers()
    up = UpTrack(
        "pub",
        transceiver,
        publish.inbound,
        pli_min_interval=0.0,
        metrics=publish.metrics,
        on_ended=lambda u: None,
        on_layers=lambda track, rids: asked.append(rids),
    )
    pub = Publisher(publish)
    try:
        for rid in SSRCS:
            pub.frame(rid, key=True)
        assert asked == [["q"]]  # nobody subscribed: only the lowest layer
        assert up.active_layers == ("q",)
        # Layers the publisher was asked to stop are still offered to the allocation.
        assert [i for i, _ in up.arriving_layers()] == [0, 1, 2]
        down = DownTrack("video", publish.metrics)
        down.attach(up)
        assert asked[-1] == ["q", "h", "f"]
        up.set_max_layer(down, 1)
        assert asked[-1] == ["q", "h"]
        up.set_max_layer(down, PAUSED)
        assert asked[-1] == ["q"]
        up.set_max_layer(down, None)
        assert asked[-1] == ["q", "h", "f"]
        down.detach()
        assert asked[-1] == ["q"]
        assert len(asked) == 6  # only changes are sent
    finally:
        await up.close()


async def test_a_track_allocated_before_its_layers_arrive_is_sent_once_they_do(
    publish: Publish,
) -> None:
    from media.adaptation import SubscriberAdaptation
    from media.feedback import SubscriberFeedback
    from media.subscription import Slot

    up, metrics = publish.up, publish.metrics
    subscriber = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    slot = Slot(subscriber, up, metrics)
    await subscriber.setLocalDescription(await subscriber.createOffer())
    feedback = SubscriberFeedback("sub", lambda ssrc: None, metrics=metrics)

    async def send(message: dict[str, object]) -> None:
        pass

    now = [100.0]
    adaptation = SubscriberAdaptation(
        "sub", feedback, lambda: [slot], send, metrics=metrics, clock=lambda: now[0]
    )
    try:
        await adaptation.tick()  # nothing arrived yet
        pub = Publisher(publish)
        for rid in SSRCS:
            pub.frame(rid, key=True)
        _measure(up, pub, (150_000, 500_000, 1_500_000))
        now[0] += 0.5
        await adaptation.tick()
        pub.frame("f", key=True)
        assert not up.paused(slot.down)
        assert up.layer_of(slot.down) is up.layer("f")
    finally:
        await adaptation.close()
        slot.close()
        await subscriber.close()


async def _on_the_top_layer(
    publish: Publish,
) -> tuple[UpTrack, Publisher, Any, Any, DownTrack]:
    """A subscriber's down track receiving the publisher's top layer, all three arriving."""
    up = publish.up
    pub = Publisher(publish)
    fast, ext_map = _fast()
    down = DownTrack("video", publish.metrics)
    down.sender, fast.down = fast, down
    for rid in ("q", "h", "f"):
        pub.frame(rid, key=True)
    up.sync()
    down.attach(up)
    pub.frame("f", key=True)
    await eventually(lambda: up.layer_of(down) is up.layer("f"), message="on the top layer")
    return up, pub, fast, ext_map, down


@pytest.mark.usefixtures("implementation")
async def test_an_urgent_move_down_stops_the_higher_layer_at_once(publish: Publish) -> None:
    """The subscriber's link cannot carry the top layer: nothing more of it is sent while
    the low layer's keyframe is awaited (forwarding it would flood the link), and the
    stream goes on from that keyframe, numbering continuous."""
    up, pub, fast, ext_map, down = await _on_the_top_layer(publish)
    before = sent(fast, ext_map)
    assert before

    up.set_max_layer(down, 0, urgent=True)
    assert up.layer_of(down) is None and up.target_of(down) is up.layer("q")
    pub.frame("f")
    pub.frame("q")  # a delta frame of the target: not a place to start
    assert sent(fast, ext_map) == []
    key_q = pub.frame("q", key=True)
    after = sent(fast, ext_map)
    assert [p.payload[4:] for p in after] == [k[4:] for k in key_q]
    assert up.layer_of(down) is up.layer("q")
    seqs = [p.sequence_number for p in before + after]
    assert all((b - a) & 0xFFFF == 1 for a, b in itertools.pairwise(seqs))
    assert publish.metrics.counts["layer_switch_down"] == 1

    # Not urgent (a smaller tile): the current layer goes on until the keyframe.
    up.set_max_layer(down, None)
    pub.frame("f", key=True)
    assert up.layer_of(down) is up.layer("f")
    sent(fast, ext_map)
    up.set_max_layer(down, 1)
    still_f = pub.frame("f")
    assert [p.payload[4:] for p in sent(fast, ext_map)] == [c[4:] for c in still_f]
    down.detach()


@pytest.mark.usefixtures("implementation")
async def test_a_paused_track_can_still_be_probed_for(publish: Publish) -> None:
    """Paused for lack of bandwidth, a track sends nothing, yet probes must find out
    when it fits again: its sender pads with copies of what it sent last on its layer."""
    up, pub, fast, ext_map, down = await _on_the_top_layer(publish)
    setattr(fast.sender, "_RTCRtpSender__rtx_payload_type", 97)  # noqa: B010
    last = sent(fast, ext_map)[-1]
    up.set_max_layer(down, PAUSED, urgent=True)
    assert up.paused(down)
    for rid in ("q", "h", "f"):  # the layers go on; nothing of them reaches it
        pub.frame(rid)
    assert sent(fast, ext_map) == []
    assert fast.pad(3000) >= 3000
    copies = sent(fast, ext_map)
    assert copies and all(c.payload_type == 97 for c in copies)
    assert int.from_bytes(copies[-1].payload[:2], "big") <= last.sequence_number
    down.detach()


@pytest.mark.usefixtures("implementation")
async def test_keyframes_are_asked_of_the_layer_awaited_and_not_for_a_paused_track(
    publish: Publish,
) -> None:
    """A subscriber's PLI while it waits for the low layer's keyframe (moved down at
    once) asks that layer alone; while its video is paused, none at all: Chromium
    encodes a keyframe on every simulcast layer for any one asked, which every other
    subscriber, and a weak link most, pays for."""
    up, _pub, fast, _ext_map, down = await _on_the_top_layer(publish)
    up.set_max_layer(down, 0, urgent=True)
    assert up.layer_of(down) is None and up.target_of(down) is up.layer("q")
    await eventually(lambda: SSRCS["q"] in plis(publish), message="the switch's PLI of q")
    publish.upstream.clear()
    fast.keyframe_wanted()  # the subscriber's PLI
    await eventually(lambda: SSRCS["q"] in plis(publish), message="a PLI of q")
    assert set(plis(publish)) == {SSRCS["q"]}

    up.set_max_layer(down, PAUSED, urgent=True)
    assert up.paused(down)
    publish.upstream.clear()
    fast.keyframe_wanted()
    up.request_keyframe()  # another's need of every layer still gets through
    await eventually(lambda: len(set(plis(publish))) == 3, message="PLIs of every layer")
    publish.upstream.clear()
    fast.keyframe_wanted()
    await asyncio.sleep(0.2)  # a window for a PLI that must not come
    assert plis(publish) == []
    down.detach()
