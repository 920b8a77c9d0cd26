"""One room on two SFUs (two nodes' media planes in one process), joined by their
relay sockets on 127.0.0.1: real aiortc clients on each, span states passed
between them as signaling would (media/span.py, media/relay.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from media.config import MediaConfig
from media.errors import MediaError
from media.loadtest.preencoded import EncodedClip
from media.loadtest.sfuclient import LocalSignaling, SfuClient
from media.loadtest.simulcast import SimulcastClips, simulcast_clips
from media.metrics import CountingMediaMetrics
from media.relay import RelayConfig
from media.seam import Message
from media.sfu import Sfu
from tests.media.test_room import receives_all
from tests.support.polling import eventually

CALL = "call-span"
SECRET = "span-test-secret"


class NodePort:
    """One node's signaling: messages to its clients, span states to the other nodes."""

    def __init__(self, cluster: Span, node: str) -> None:
        self.cluster = cluster
        self.node = node
        self.local = LocalSignaling()
        self.states = 0

    async def send_to(self, call_id: str, participant_id: str, message: Message) -> None:
        await self.local.send(participant_id, message)

    async def send_error(self, call_id: str, participant_id: str, error: MediaError) -> None:
        await self.local.send_error(participant_id, error)

    async def announce(self, call_id: str, state: Message) -> None:
        self.states += 1
        for name, sfu in self.cluster.sfus.items():
            if name != self.node:
                await sfu.on_span(call_id, state)


class Span:
    def __init__(self, config: MediaConfig, video: EncodedClip, audio: EncodedClip) -> None:
        self.config = config
        self.video, self.audio = video, audio
        self.ports = {n: NodePort(self, n) for n in ("a", "b")}
        self.metrics = {n: CountingMediaMetrics() for n in ("a", "b")}
        self.sfus = {
            n: Sfu(
                config,
                self.ports[n],
                self.metrics[n],
                relay=RelayConfig(host="127.0.0.1", port=0, secret=SECRET),
                span=self.ports[n],
                node_id=f"node-{n}",
            )
            for n in ("a", "b")
        }
        self.clients: dict[str, SfuClient] = {}
        self.node_of: dict[str, str] = {}

    async def start(self) -> None:
        for sfu in self.sfus.values():
            await sfu.start()

    async def join(
        self, name: str, node: str, *, publish: bool = True, simulcast: SimulcastClips | None = None
    ) -> SfuClient:
        sfu = self.sfus[node]

        async def send(message: dict[str, object]) -> None:
            await sfu.handle_signal(CALL, name, message)

        client = SfuClient(
            name,
            send,
            rtc_configuration=self.config.rtc_configuration(),
            video=self.video if publish and simulcast is None else None,
            audio=self.audio if publish else None,
            simulcast=simulcast,
        )
        self.clients[name] = client
        self.node_of[name] = node
        self.ports[node].local.clients[name] = client
        await client.publish()
        return client

    async def leave(self, name: str) -> None:
        client = self.clients.pop(name)
        node = self.node_of.pop(name)
        self.ports[node].local.clients.pop(name, None)
        await self.sfus[node].remove_participant(CALL, name)
        await client.close()

    async def close(self) -> None:
        for client in self.clients.values():
            await client.close()
        for sfu in self.sfus.values():
            await sfu.close()


@pytest.fixture
async def span(
    config: MediaConfig, video_clip: EncodedClip, audio_clip: EncodedClip
) -> AsyncIterator[Span]:
    s = Span(config, video_clip, audio_clip)
    await s.start()
    yield s
    await s.close()


def receives(client: SfuClient, others: list[str], frames: int = 5) -> bool:
    return receives_all(client, others, frames)


async def test_participants_on_two_nodes_see_each_other_and_a_track_crosses_once(
    span: Span,
) -> None:
    await span.join("ana", "a")
    await span.join("ben", "b")
    await span.join("cleo", "b")
    names = ["ana", "ben", "cleo"]
    for name in names:
        others = [n for n in names if n != name]
        client = span.clients[name]

        def got_all(c: SfuClient = client, o: list[str] = others) -> bool:
            return receives(c, o)

        await eventually(got_all, timeout=20, message=f"{name} media")
    a, b = span.metrics["a"].counts, span.metrics["b"].counts
    room_a = span.sfus["a"].room(CALL)
    assert room_a is not None and room_a.span is not None
    ana_video = next(up for up in room_a.local_tracks() if up.kind == "video")
    # Ana's video went to node b once, not once per subscriber there (ben and cleo).
    assert room_a.span.taps == 2  # ana's audio and video, to node b
    received = ana_video.packets_in
    relayed = a["relay_out_video_packets"]
    assert received * 0.9 <= relayed <= received + 5, (relayed, received)
    # Node b got that one copy, and fed both its subscribers from it.
    assert b["relay_in_video_packets"] >= relayed * 0.9
    ben = span.clients["ben"].received_from("ana", "video")
    cleo = span.clients["cleo"].received_from("ana", "video")
    assert ben is not None and cleo is not None and ben.frames >= 5 and cleo.frames >= 5
    assert a["relay_dropped_auth"] == 0 and b["relay_dropped_auth"] == 0


async def test_keyframe_requests_cross_back_to_the_publisher(span: Span) -> None:
    await span.join("ana", "a")
    await span.join("ben", "b", publish=False)
    await eventually(lambda: receives(span.clients["ben"], ["ana"]), timeout=20, message="media")
    # Ben's subscription started with a keyframe request, relayed to node a as a PLI.
    assert span.metrics["b"].counts["relay_pli_out"] >= 1
    assert span.metrics["a"].counts["relay_pli_in"] >= 1


async def test_leaving_releases_relay_state_on_both_nodes(span: Span) -> None:
    await span.join("ana", "a")
    await span.join("ben", "b")
    await eventually(lambda: receives(span.clients["ben"], ["ana"]), timeout=20, message="media")
    relay_a, relay_b = span.sfus["a"].relay, span.sfus["b"].relay
    assert relay_a is not None and relay_b is not None
    assert relay_a.taps and relay_b.sources
    await span.leave("ben")  # node b's room closes
    await eventually(lambda: span.sfus["b"].room(CALL) is None, message="b's room closed")
    assert not relay_b.sources and not relay_b.taps
    await eventually(lambda: not relay_a.taps, timeout=5, message="a stops relaying to b")
    room_a = span.sfus["a"].room(CALL)
    assert room_a is not None and room_a.span is not None
    span_a = room_a.span
    await eventually(lambda: not span_a.remote_tracks(), message="b's tracks gone on a")
    assert not relay_a.sources
    assert relay_a.links == 0


async def test_a_simulcast_track_crosses_as_one_layer_and_survives_a_switch(span: Span) -> None:
    layers = simulcast_clips(320, 180, frames=30, fps=15, bitrate=300_000, keyframe_every=15)
    await span.join("ana", "a", simulcast=layers)
    await span.join("ben", "b", publish=False)
    ben = span.clients["ben"]

    def video() -> int:
        stats = ben.received_from("ana", "video")
        return stats.frames if stats is not None else 0

    def saw(size: tuple[int, int]) -> bool:
        stats = ben.received_from("ana", "video")
        return stats is not None and any((w, h) == size for _, w, h in stats.sizes)

    top, low = layers.sizes[-1], layers.sizes[0]
    await eventually(lambda: video() >= 10 and saw(top), timeout=20, message="ana's top layer")
    room_a = span.sfus["a"].room(CALL)
    relay_a = span.sfus["a"].relay
    assert room_a is not None and relay_a is not None
    (tap,) = [d for d in relay_a.taps.values() if d.kind == "video"]
    up = next(u for u in room_a.local_tracks() if u.kind == "video")
    # The tap moves to the lowest layer on node a (other sequence numbers, timestamps
    # and picture ids): ben, on node b, starts over there at its keyframe.
    up.set_max_layer(tap, 0)
    frames = video()
    await eventually(
        lambda: saw(low) and video() >= frames + 10, timeout=20, message="the lower layer"
    )


async def test_packets_lost_between_the_nodes_are_sent_again(span: Span) -> None:
    relay_b = span.sfus["b"].relay
    assert relay_b is not None
    # Fault injection: node b's socket loses every 10th video datagram from node a
    # (video ones are the large ones: Opus packets stay far below 300 bytes).
    received = relay_b.datagram_received
    seen = [0, 0]

    def lossy(data: bytes, addr: tuple[str, int]) -> None:
        if len(data) > 300:
            seen[0] += 1
            if seen[0] % 10 == 0:
                seen[1] += 1
                return
        received(data, addr)

    setattr(relay_b, "datagram_received", lossy)  # noqa: B010 - the one instance
    await span.join("ana", "a")
    await span.join("ben", "b", publish=False)
    a, b = span.metrics["a"].counts, span.metrics["b"].counts
    await eventually(
        lambda: receives(span.clients["ben"], ["ana"], frames=30) and b["relay_nack_out"] >= 3,
        timeout=30,
        message="media, and lost packets asked for again",
    )
    print(f"dropped {seen[1]}, asked again {b['relay_nack_out']}, resent {a['relay_nack_in']}")
    assert seen[1] >= 3
    relay_a = span.sfus["a"].relay
    assert relay_a is not None
    (tap,) = [d for d in relay_a.taps.values() if d.kind == "video"]

    def resent() -> bool:
        # Node a heard each request and sent the packets again from its cache.
        return a["relay_nack_in"] >= 3 and tap.tap.resent >= 3

    await eventually(resent, timeout=5, message="lost packets sent again")
