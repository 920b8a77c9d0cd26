"""Signaling on one node, over real WebSockets (aiohttp TestServer on 127.0.0.1)."""

from __future__ import annotations

import json
import time
from typing import Any

import jwt
import pytest

from server.ids import RESERVED_USER_IDS
from server.keys import METRICS
from signaling.client import SignalingClient, SignalingRejected
from signaling.keys import HUB
from signaling.protocol import CloseCode
from tests.conftest import TEST_SECRET
from tests.signaling.conftest import Node, NodeFactory
from tests.signaling.messages import SDP, answer, candidate, end_of_candidates, offer
from tests.support.clock import ManualClock
from tests.support.polling import eventually


def sample(node: Node, name: str) -> float:
    value = node.app[METRICS].registry.get_sample_value(name)
    return float(value or 0.0)


async def settled(client: SignalingClient) -> None:
    """Take the roster and mode every new socket gets first."""
    await client.receive("participants")
    await client.receive("mode")


# -- relaying ----------------------------------------------------------------------------


async def test_two_participants_exchange_offer_answer_candidates(node: Node) -> None:
    ana, bob = await node.api.users("ana", "bob")
    call_id = await node.joined_call(ana, bob)
    a = await node.ws(call_id, ana)
    roster = await a.receive("participants")
    assert {p["participant_id"] for p in roster["participants"]} == {ana.user_id, bob.user_id}
    assert (await a.receive("mode"))["mode"] == "p2p"
    b = await node.ws(call_id, bob)
    await settled(b)
    online = await a.receive("presence")
    assert online["participant_id"] == bob.user_id and online["online"] is True

    await a.send(offer(bob.user_id))
    got = await b.receive("offer")
    assert got["sdp"] == SDP and got["sender_id"] == ana.user_id and got["call_id"] == call_id
    assert got["timestamp"].endswith("Z")
    await b.send(answer(ana.user_id))
    assert (await a.receive("answer"))["sender_id"] == bob.user_id
    await a.send(candidate(bob.user_id))
    await a.send(end_of_candidates(bob.user_id))
    first = await b.receive("ice_candidate")
    assert first["candidate"]["sdpMLineIndex"] == 0
    assert (await b.receive("ice_candidate"))["candidate"] is None
    assert sample(node, "video_ice_candidate_valid_total") == 2


async def test_p2p_descriptions_carry_their_sources_and_bad_ones_are_refused(node: Node) -> None:
    # A P2P screen share: the offer says which of its mids is the screen.
    ana, bob = await node.api.users("ana", "bob")
    call_id = await node.joined_call(ana, bob)
    a = await node.ws(call_id, ana)
    await settled(a)
    b = await node.ws(call_id, bob)
    await settled(b)
    sources = {"0": "microphone", "1": "camera", "2": "screen"}
    await a.send(offer(bob.user_id, sources=sources))
    assert (await b.receive("offer"))["sources"] == sources
    await b.send(answer(ana.user_id, sources={"0": "microphone"}))
    assert (await a.receive("answer"))["sources"] == {"0": "microphone"}
    await a.send(offer(bob.user_id, id="bad", sources={"2": "hologram"}))
    error = await a.receive("error")
    assert error["code"] == "invalid_field" and error["id"] == "bad"
    assert "hologram" not in json.dumps([m for m in b.messages if m["type"] == "offer"])


async def test_third_participant_cannot_read_targeted_messages(node: Node) -> None:
    ana, bob, cyd = await node.api.users("ana", "bob", "cyd")
    call_id = await node.joined_call(ana, bob, cyd)
    a, b, c = [await node.ws(call_id, u) for u in (ana, bob, cyd)]
    await a.send(offer(bob.user_id, id="o1"))
    assert (await b.receive("offer"))["id"] == "o1"
    # A ping/pong round trip on C's socket: anything for C was queued before the pong.
    await c.send({"type": "ping"})
    await c.receive("pong")
    await a.send({"type": "ping"})
    await a.receive("pong")
    assert not [m for m in c.messages if m["type"] in {"offer", "answer", "ice_candidate"}]
    assert not [m for m in a.messages if m["type"] == "offer"]


async def test_forged_fields_are_overwritten(node: Node) -> None:
    ana, bob = await node.api.users("ana", "bob")
    call_id = await node.joined_call(ana, bob)
    a, b = await node.ws(call_id, ana), await node.ws(call_id, bob)
    forged = offer(
        bob.user_id,
        sender_id=bob.user_id,
        call_id="00000000-0000-0000-0000-000000000000",
        timestamp="1999-01-01T00:00:00Z",
        secret="dropped",
    )
    await a.send(forged)
    got = await b.receive("offer")
    assert got["sender_id"] == ana.user_id
    assert got["call_id"] == call_id
    assert not got["timestamp"].startswith("1999")
    assert "secret" not in got


# -- bad input ---------------------------------------------------------------------------

BAD_INPUTS: list[tuple[str, Any]] = [
    ("invalid_json", "{not json"),
    ("invalid_message", "[1, 2, 3]"),
    ("binary_not_supported", b"\x00\x01"),
    ("missing_field", {"target_id": "x"}),
    ("unknown_type", {"type": "teleport"}),
    ("missing_field", {"type": "offer", "sdp": SDP}),
    ("invalid_target", {"type": "offer", "target_id": "no spaces allowed", "sdp": SDP}),
    ("invalid_sdp", {"type": "offer", "target_id": "peer", "sdp": "not sdp"}),
    ("invalid_sdp", {"type": "answer", "target_id": "peer", "sdp": "v=0\r\nnope\r\n"}),
    ("invalid_candidate", {"type": "ice_candidate", "target_id": "peer", "candidate": {}}),
    (
        "invalid_candidate",
        {
            "type": "ice_candidate",
            "target_id": "peer",
            "candidate": {"candidate": "candidate:1 1 udp 1 1.2.3.4 5 typ host", "sdpMid": "0"},
        },
    ),
    ("invalid_candidate", candidate("peer", "candidate:garbage")),
    ("missing_field", {"type": "mute"}),
    ("invalid_field", {"type": "offer", "target_id": "sfu", "sdp": SDP, "pc": "sideways"}),
]


async def test_every_bad_input_gets_its_error_and_the_socket_stays(node: Node) -> None:
    ana, bob = await node.api.users("ana", "bob")
    call_id = await node.joined_call(ana, bob)
    a = await node.ws(call_id, ana)
    await settled(a)
    for code, payload in BAD_INPUTS:
        await a.send_raw(payload if isinstance(payload, str | bytes) else json.dumps(payload))
        error = await a.receive("error")
        assert error["code"] == code, (payload, error)
        assert error["message"] and error["sender_id"] == "server"
    # Targeting yourself is refused too, and errors echo the request id.
    await a.send(offer(ana.user_id, id=42))
    error = await a.receive("error")
    assert (error["code"], error["id"]) == ("invalid_target", 42)
    assert sample(node, "video_ice_candidate_invalid_total") == 3
    assert sample(node, "video_ice_candidate_valid_total") == 0
    await a.send({"type": "ping"})
    await a.receive("pong")
    assert not a.closed


async def test_deeply_nested_json_gets_invalid_json_and_the_seat_stays(node: Node) -> None:
    """3 KB of ``[[[[`` made the decoder raise RecursionError out of the handler:
    aiohttp wrote a raw ``HTTP/1.1 500`` into the upgraded stream and the
    sender lost its socket (then its seat)."""
    ana, bob = await node.api.users("ana", "bob")
    call_id = await node.joined_call(ana, bob)
    a = await node.ws(call_id, ana)
    await settled(a)
    for frame in ("[" * 3000, "[" * 3000 + "]" * 3000, '{"a":' * 1500 + "1" + "}" * 1500):
        await a.send_raw(frame)
        error = await a.receive("error")
        assert error["code"] == "invalid_json", error
    await a.send({"type": "ping"})
    await a.receive("pong")
    assert not a.closed
    status = await node.api.status(call_id, ana)
    seat = next(p for p in status["participants"] if p["user_id"] == ana.user_id)
    assert seat["joined_at"] and not seat["left_at"]


async def test_sfu_message_without_sfu_gets_sfu_unavailable(node: Node) -> None:
    node.app[HUB].attach_sfu(None)  # whatever the app wired (media's SFU), take it out
    ana, bob = await node.api.users("ana", "bob")
    call_id = await node.joined_call(ana, bob)
    a = await node.ws(call_id, ana)
    await a.send(offer("sfu", pc="publish"))
    assert (await a.receive("error"))["code"] == "sfu_unavailable"


# -- abuse -------------------------------------------------------------------------------


async def test_flood_closes_the_socket(make_node: NodeFactory) -> None:
    node = await make_node(messages_per_second=5.0, message_burst=10)
    ana, bob = await node.api.users("ana", "bob")
    call_id = await node.joined_call(ana, bob)
    a = await node.ws(call_id, ana)
    for _ in range(40):
        if a.closed:
            break
        try:
            await a.send({"type": "ping"})
        except ConnectionError:
            break
    assert await a.wait_closed() == CloseCode.RATE_LIMITED


async def test_oversized_frame_closes_the_socket(make_node: NodeFactory) -> None:
    node = await make_node(max_message_bytes=2048)
    ana, bob = await node.api.users("ana", "bob")
    call_id = await node.joined_call(ana, bob)
    a = await node.ws(call_id, ana)
    await settled(a)
    await a.send(offer(bob.user_id, sdp=SDP + "a=x:" + "y" * 4096 + "\r\n"))
    assert await a.wait_closed() == CloseCode.MESSAGE_TOO_BIG


async def test_repeated_invalid_messages_close_the_socket(node: Node) -> None:
    ana, bob = await node.api.users("ana", "bob")
    call_id = await node.joined_call(ana, bob)
    a = await node.ws(call_id, ana)
    burst = node.app[HUB].options.error_burst
    for _ in range(burst + 5):
        if a.closed:
            break
        try:
            await a.send_raw("nope")
        except ConnectionError:
            break
    assert await a.wait_closed() == CloseCode.TOO_MANY_ERRORS
    assert len([m for m in a.messages if m["type"] == "error"]) >= burst


# -- heartbeat, disconnects --------------------------------------------------------------


async def test_heartbeat_pings_then_drops_a_silent_client(make_node: NodeFactory) -> None:
    node = await make_node(ping_after_s=0.3, drop_after_s=1.0)
    ana, bob = await node.api.users("ana", "bob")
    call_id = await node.joined_call(ana, bob)
    lively = await node.ws(call_id, ana)
    silent = await node.ws(call_id, bob, auto_pong=False)
    assert (await silent.receive("ping", timeout=5))["sender_id"] == "server"
    assert await silent.wait_closed(timeout=10) == CloseCode.HEARTBEAT_TIMEOUT
    # The client that answers pings stays connected through several rounds.
    await lively.receive("ping", timeout=5)
    await lively.receive("ping", timeout=5)
    assert not lively.closed


async def test_reconnect_within_grace_keeps_the_seat(make_node: NodeFactory) -> None:
    node = await make_node(grace_s=1.5)
    clock = ManualClock()
    node.app[HUB].grace.sleep = clock.sleep
    ana, bob = await node.api.users("ana", "bob")
    call_id = await node.joined_call(ana, bob)
    a = await node.ws(call_id, ana)
    await settled(a)
    b = await node.ws(call_id, bob)
    await a.receive("presence", where=lambda m: m["online"])
    await b.ws.close()  # a dropped socket (client-side close, no leave)
    await a.receive("presence", where=lambda m: not m["online"])
    b2 = await node.ws(call_id, bob)
    await settled(b2)
    await a.receive("presence", where=lambda m: m["online"])
    # The pending leave is gone at once, and past the grace period nobody left.
    hub = node.app[HUB]

    async def no_pending_leave() -> bool:
        return hub.pending_leaves(call_id) == 0

    await eventually(no_pending_leave, timeout=5)
    # The drop did start a grace period, and the reconnect called it off: even
    # once its time is up, nothing follows.
    assert [wait.seconds for wait in clock.waits] == [1.5]
    assert clock.waits[0].done.cancelled()
    clock.advance()
    await a.send({"type": "ping"})
    await a.receive("pong")
    assert not any(m["type"] == "leave" for m in a.messages)
    assert sample(node, "video_call_cleanup_on_disconnect_total") == 0
    status = await node.api.status(call_id, ana)
    assert status["status"] == "active"
    bob_entry = next(p for p in status["participants"] if p["user_id"] == bob.user_id)
    assert bob_entry["left_at"] is None


async def test_disconnect_beyond_grace_leaves_and_the_last_one_ends_the_call(
    make_node: NodeFactory,
) -> None:
    node = await make_node(grace_s=0.3)
    ana, bob = await node.api.users("ana", "bob")
    call_id = await node.joined_call(ana, bob)
    a = await node.ws(call_id, ana)
    b = await node.ws(call_id, bob)
    await b.ws.close()
    left = await a.receive("leave", timeout=10)
    assert left["participant_id"] == bob.user_id
    await a.ws.close()

    async def ended() -> bool:
        return (await node.api.status(call_id, ana))["status"] == "ended"

    await eventually(ended, timeout=10)
    assert sample(node, "video_call_cleanup_on_disconnect_total") == 2
    assert sample(node, "video_call_cleanup_failed_total") == 0


# -- admission -----------------------------------------------------------------------------


async def test_admission_rules(make_node: NodeFactory) -> None:
    node = await make_node(allowed_origins=("https://app.example",), max_connections=3)
    ana, bob, eve = await node.api.users("ana", "bob", "eve")
    call = await node.api.group_call(ana, bob)
    call_id = call["call_id"]

    async def refused(user_token: str, **options: Any) -> int:
        with pytest.raises(SignalingRejected) as caught:
            await SignalingClient.open(
                node.base_url,
                options.pop("call", call_id),
                user_token,
                session=node.client.session,
                **options,
            )
        return caught.value.status

    assert await refused("not-a-jwt") == 401
    for reserved in sorted(RESERVED_USER_IDS):  # signed, but a sub that could pass for the server
        forged = jwt.encode({"sub": reserved, "exp": time.time() + 60}, TEST_SECRET, "HS256")
        assert await refused(forged) == 401
    assert await refused(eve.token) == 403  # not a member of the call's conversation
    assert await refused(bob.token) == 403  # invited but not joined yet
    assert await refused(ana.token, call="not-a-uuid") == 400
    assert await refused(ana.token, call="5f0e8a4e-8f55-4a0e-9d38-4f1e54f8e0a1") == 404
    assert await refused(ana.token, origin="https://evil.example") == 403
    # The allowed origin and the access_token query parameter both work.
    a = await node.ws(call_id, ana, origin="https://app.example", token_in_query=True)
    await settled(a)
    await node.api.action(call_id, "join", bob)
    await node.ws(call_id, bob)
    # Two sockets plus one being replaced fill the node (max 3): a 4th upgrade gets 503.
    extra = await node.ws(call_id, ana)
    assert await a.wait_closed() == CloseCode.REPLACED
    await settled(extra)
    await node.ws(call_id, bob)
    await node.ws(call_id, ana)  # replaces again; still 2 live sockets
    hub = node.app[HUB]

    async def two_live() -> bool:
        return hub.connection_count == 2

    await eventually(two_live, timeout=5)
    await node.api.action(call_id, "end", ana)
    ended = await refused(ana.token)
    assert ended == 410


async def test_connection_limit_answers_503(make_node: NodeFactory) -> None:
    node = await make_node(max_connections=1)
    ana, bob = await node.api.users("ana", "bob")
    call_id = await node.joined_call(ana, bob)
    await node.ws(call_id, ana)
    with pytest.raises(SignalingRejected) as caught:
        await SignalingClient.open(node.base_url, call_id, bob.token, session=node.client.session)
    assert caught.value.status == 503


# -- lifecycle events ----------------------------------------------------------------------


async def test_lifecycle_events_reach_connected_clients(node: Node) -> None:
    ana, bob, cyd, dan = await node.api.users("ana", "bob", "cyd", "dan")
    conversation_id = await node.api.conversation(ana, bob, cyd, dan)
    call = await node.api.initiate(ana, conversation_id, bob)
    call_id = call["call_id"]
    a = await node.ws(call_id, ana)
    await settled(a)

    await node.api.action(call_id, "join", bob)
    assert (await a.receive("join"))["participant_id"] == bob.user_id
    b = await node.ws(call_id, bob)
    assert (await b.receive("mode"))["mode"] == "p2p"

    await b.send({"type": "mute", "muted": True})
    for client in (a, b):
        muted = await client.receive("mute")
        assert (muted["participant_id"], muted["muted"], muted["video"]) == (
            bob.user_id,
            True,
            True,
        )

    await node.api.call(
        "POST",
        f"/v1/calls/{call_id}/invite",
        ana,
        json={"callee_ids": [cyd.user_id, dan.user_id]},
        expect=200,
    )
    invited = await b.receive("invited")
    assert invited["invited_ids"] == [cyd.user_id, dan.user_id]
    assert invited["participant_id"] == ana.user_id
    await node.api.action(call_id, "decline", cyd)
    assert (await a.receive("declined"))["participant_id"] == cyd.user_id

    await node.api.action(call_id, "join", dan)  # a third joiner moves the call to the SFU
    assert (await a.receive("mode"))["mode"] == "sfu"
    assert (await b.receive("mode"))["mode"] == "sfu"

    await node.api.action(call_id, "leave", dan)
    assert (await a.receive("leave"))["participant_id"] == dan.user_id

    await node.api.action(call_id, "end", ana)
    for client in (a, b):
        ended = await client.receive("call_ended")
        assert ended["reason"] == "completed"
        assert await client.wait_closed() == CloseCode.NORMAL


async def test_leave_message_leaves_the_call(node: Node) -> None:
    ana, bob = await node.api.users("ana", "bob")
    call_id = await node.joined_call(ana, bob)
    a, b = await node.ws(call_id, ana), await node.ws(call_id, bob)
    await b.send({"type": "leave"})
    assert await b.wait_closed() == CloseCode.NORMAL
    assert (await a.receive("leave"))["participant_id"] == bob.user_id
    bob_entry = next(
        p
        for p in (await node.api.status(call_id, ana))["participants"]
        if p["user_id"] == bob.user_id
    )
    assert bob_entry["left_at"] is not None


async def test_shutdown_closes_with_going_away(make_node: NodeFactory) -> None:
    node = await make_node()
    ana, bob = await node.api.users("ana", "bob")
    call_id = await node.joined_call(ana, bob)
    a = await node.ws(call_id, ana)
    await settled(a)
    await node.client.server.close()  # runs on_shutdown, as SIGTERM does in run_app
    assert await a.wait_closed() == CloseCode.GOING_AWAY
