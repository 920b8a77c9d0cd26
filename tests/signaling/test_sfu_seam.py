"""The SFU seam on one node: a recording SfuEndpoint stands in for media's room manager."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from media.errors import NegotiationTimeout
from media.seam import MediaError, ParticipantLeft, RoomEnded, RoomEvent, SfuEndpoint
from server.keys import METRICS
from signaling.keys import HUB
from signaling.protocol import ErrorCode
from tests.signaling.conftest import Node
from tests.signaling.messages import answer, candidate, offer
from tests.support.polling import eventually


class Rejected(MediaError):
    code = "bad_request"


@dataclass
class FakeSfu:
    signals: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    gone: list[tuple[str, str]] = field(default_factory=list)
    closed: list[str] = field(default_factory=list)
    rooms: set[str] = field(default_factory=set)

    def has_room(self, call_id: str) -> bool:
        return call_id in self.rooms

    def members(self) -> dict[str, frozenset[str]]:
        return {call_id: frozenset() for call_id in self.rooms}

    async def handle_signal(
        self, call_id: str, participant_id: str, message: dict[str, Any]
    ) -> None:
        if message.get("sdp", "").endswith("a=reject\r\n"):
            raise Rejected("the SFU refuses this offer")
        self.rooms.add(call_id)
        self.signals.append((call_id, participant_id, message))

    async def on_event(self, event: RoomEvent) -> None:
        if isinstance(event, ParticipantLeft):
            self.gone.append((event.call_id, event.participant_id))
        elif isinstance(event, RoomEnded):
            self.rooms.discard(event.call_id)
            self.closed.append(event.call_id)


async def test_sfu_messages_reach_the_endpoint_and_answers_come_back(node: Node) -> None:
    sfu = FakeSfu()
    endpoint: SfuEndpoint = sfu
    hub = node.app[HUB]
    hub.attach_sfu(endpoint)
    ana, bob, cyd = await node.api.users("ana", "bob", "cyd")
    call_id = await node.joined_call(ana, bob, cyd)
    a, b = await node.ws(call_id, ana), await node.ws(call_id, bob)
    assert (await a.receive("mode"))["mode"] == "sfu"

    await a.send(offer("sfu", pc="publish", sender_id="forged"))
    await a.send(candidate("sfu", pc="publish"))

    async def two_signals() -> bool:
        return len(sfu.signals) == 2

    await eventually(two_signals, timeout=5)
    first_call, sender, message = sfu.signals[0]
    assert (first_call, sender) == (call_id, ana.user_id)
    assert message["sender_id"] == ana.user_id and message["pc"] == "publish"
    assert sfu.signals[1][2]["type"] == "ice_candidate"

    await hub.send_to(call_id, ana.user_id, {"type": "answer", "pc": "publish", "sdp": "v=0"})
    got = await a.receive("answer")
    assert (got["sender_id"], got["call_id"], got["pc"]) == ("sfu", call_id, "publish")
    await hub.send_to(call_id, bob.user_id, {"type": "tracks", "tracks": []})
    assert (await b.receive("tracks"))["sender_id"] == "sfu"
    assert not [m for m in a.messages if m["type"] == "tracks"]
    # An error the SFU raises unasked travels typed and is built (and counted) by signaling.
    await hub.send_error(call_id, bob.user_id, NegotiationTimeout("no subscribe answer"))
    unasked = await b.receive("error")
    assert (unasked["code"], unasked["message"]) == ("negotiation_timeout", "no subscribe answer")
    assert (unasked["sender_id"], unasked["call_id"]) == ("sfu", call_id) and "timestamp" in unasked
    errors = node.app[METRICS].registry.get_sample_value(
        "video_signaling_errors_total", {"code": "negotiation_timeout"}
    )
    assert errors == 1

    rejected = answer("sfu", pc="subscribe", id="r1")
    rejected["sdp"] += "a=reject\r\n"
    await b.send(rejected)
    error = await b.receive("error")
    assert (error["code"], error["id"]) == ("bad_request", "r1")

    await node.api.action(call_id, "leave", bob)

    async def bob_gone() -> bool:
        return sfu.gone == [(call_id, bob.user_id)]

    await eventually(bob_gone, timeout=5)
    await node.api.action(call_id, "end", ana)

    async def room_closed() -> bool:
        return sfu.closed == [call_id]

    await eventually(room_closed, timeout=5)


async def test_detached_sfu_answers_sfu_unavailable(node: Node) -> None:
    hub = node.app[HUB]
    hub.attach_sfu(FakeSfu())
    hub.attach_sfu(None)
    ana, bob = await node.api.users("ana", "bob")
    call_id = await node.joined_call(ana, bob)
    a = await node.ws(call_id, ana)
    await a.send(offer("sfu", pc="publish"))
    assert (await a.receive("error"))["code"] == ErrorCode.SFU_UNAVAILABLE


async def test_a_subscribe_message_reaches_the_sfu(node: Node) -> None:
    sfu = FakeSfu()
    node.app[HUB].attach_sfu(sfu)
    ana, bob, cyd = await node.api.users("ana", "bob", "cyd")
    call_id = await node.joined_call(ana, bob, cyd)
    a = await node.ws(call_id, ana)
    assert (await a.receive("mode"))["mode"] == "sfu"
    await a.send({"type": "subscribe", "target_id": "sfu"})

    async def arrived() -> bool:
        return len(sfu.signals) == 1

    await eventually(arrived, timeout=5)
    assert sfu.signals[0][:2] == (call_id, ana.user_id)
    assert sfu.signals[0][2]["type"] == "subscribe"
