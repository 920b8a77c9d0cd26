"""ICE restarts of SFU connections in place (docs/protocol.md "ICE restart").

Real aiortc peers on 127.0.0.1: a client restarts ICE on both its
connections (a publish offer marked ``ice_restart``, an ``ice_restart`` for
the subscribe connection) and the SFU keeps the participant, its tracks and
subscriptions, and DTLS: new ICE credentials both ways, a newly nominated
pair on each server connection, and media flowing on through the switch.
A real change of the client's address is the browser test's
(tests/browser/test_network_change.py).
"""

from __future__ import annotations

import pytest

from media.aiortc_compat import dtls_transport_of, ice_connection
from media.errors import BadSignal, SessionLost
from media.loadtest.sfuclient import SfuClient
from media.signals import PUBLISH, SFU_ID, SUBSCRIBE, ice_credentials
from tests.support.polling import eventually

from .conftest import Call

KINDS = ("audio", "video")


def frames(client: SfuClient, source: str, kind: str) -> int:
    stats = client.received_from(source, kind)
    return stats.frames if stats is not None else 0


def sdps(call: Call, participant_id: str, since: int, kind: str) -> list[str]:
    return [
        str(m["sdp"])
        for pid, m in call.signaling.sent[since:]
        if pid == participant_id and m.get("type") == kind
    ]


async def flowing(call: Call) -> None:
    """Everyone receives every kind from everyone else, 10 frames beyond now."""
    for name, client in call.clients.items():
        for other in call.clients:
            if other == name:
                continue
            for kind in KINDS:
                base = frames(client, other, kind)
                await eventually(
                    lambda c=client, o=other, k=kind, b=base: frames(c, o, k) >= b + 10,
                    timeout=20,
                    message=f"{name} receives {other}'s {kind}",
                )


async def test_a_restart_moves_both_connections_to_new_pairs_without_a_new_session(
    call: Call,
) -> None:
    for name in ("ana", "ben"):
        await call.join(name)
    await flowing(call)
    ana = call.room.participants["ana"]
    ana_client = call.clients["ana"]
    pcs = {PUBLISH: ana._publish_pc, SUBSCRIBE: ana._subscribe_pc}
    connections = {name: ice_connection(pc) for name, pc in pcs.items()}
    old_pairs = {name: c._nominated[1] for name, c in connections.items() if c is not None}
    old_users = {name: c.local_username for name, c in connections.items() if c is not None}
    dtls = {name: dtls_transport_of(pc) for name, pc in pcs.items()}
    marker = len(call.signaling.sent)
    joined = call.metrics.counts["participants_joined"]

    await ana_client.restart_ice()

    await eventually(
        lambda: (
            call.metrics.counts["ice_restart_publish_ok"] == 1
            and call.metrics.counts["ice_restart_subscribe_ok"] == 1
        ),
        timeout=20,
        message="both of ana's server connections restarted",
    )
    assert call.room.participants["ana"] is ana, "an ICE restart is not a new session"
    assert call.metrics.counts["participants_joined"] == joined
    for name, connection in connections.items():
        assert connection is not None
        assert connection._nominated[1] is not old_pairs[name], f"{name}: no new pair"
        assert connection.local_username != old_users[name], f"{name}: same credentials"
        assert dtls_transport_of(pcs[name]) is dtls[name], f"{name}: DTLS was replaced"
        assert pcs[name].connectionState == "connected"
    # The answer and the next subscribe offer carried the new credentials.
    answer = sdps(call, "ana", marker, "answer")[-1]
    offer = sdps(call, "ana", marker, "offer")[-1]
    assert ice_credentials(answer) == (
        connections[PUBLISH].local_username,  # type: ignore[union-attr]
        connections[PUBLISH].local_password,  # type: ignore[union-attr]
    )
    assert ice_credentials(offer) == (
        connections[SUBSCRIBE].local_username,  # type: ignore[union-attr]
        connections[SUBSCRIBE].local_password,  # type: ignore[union-attr]
    )
    assert ana_client.ice_restarts == 2
    # Media flows on both ways, on the new pairs.
    await flowing(call)
    assert not ana_client.errors
    assert not call.clients["ben"].errors


async def test_restarting_twice_keeps_working(call: Call) -> None:
    for name in ("ana", "ben"):
        await call.join(name)
    await flowing(call)
    client = call.clients["ben"]
    for round_ in (1, 2):
        await client.restart_ice()
        await eventually(
            lambda r=round_: (
                call.metrics.counts["ice_restart_subscribe_ok"] == r
                and call.metrics.counts["ice_restart_publish_ok"] == r
            ),
            timeout=20,
            message=f"restart {round_} done",
        )
    await flowing(call)


async def test_an_ice_restart_needs_an_established_connection(call: Call) -> None:
    await call.join("ana")
    # ana receives nothing yet: no subscribe connection to restart.
    with pytest.raises(BadSignal, match="not connected"):
        await call.room.handle_signal("ana", {"type": "ice_restart", "target_id": SFU_ID})
    assert call.room.participants["ana"].failure is None


async def test_restarting_a_session_the_room_does_not_hold_says_it_was_lost(call: Call) -> None:
    await call.join("ana")
    offer = {"type": "offer", "target_id": SFU_ID, "pc": PUBLISH, "sdp": "v=0\r\n"}
    for message in ({"type": "ice_restart", "target_id": SFU_ID}, {**offer, "ice_restart": True}):
        with pytest.raises(SessionLost):
            await call.room.handle_signal("nobody", message)
    assert set(call.room.participants) == {"ana"}  # no session opened for it


async def test_resume_sends_the_outstanding_subscribe_offer_again(call: Call) -> None:
    """A subscribe offer sent into a socket that died is sent again on ``resume``."""
    await call.join("ana")
    ben = await call.join("ben")
    await flowing(call)
    # ben's socket "dies": what the SFU sends it from now on is lost.
    call.signaling.clients.pop("ben")
    marker = len(call.signaling.sent)
    await call.join("cleo")  # ben must get a subscribe offer for cleo's tracks
    await eventually(
        lambda: bool(sdps(call, "ben", marker, "offer")), message="an offer to ben (lost)"
    )
    lost = sdps(call, "ben", marker, "offer")[-1]
    # The socket is back: resume, and the offer comes again.
    call.signaling.clients["ben"] = ben
    again = len(call.signaling.sent)
    await call.room.handle_signal("ben", {"type": "resume", "target_id": SFU_ID})
    assert sdps(call, "ben", again, "offer") == [lost]
    await eventually(
        lambda: all(frames(ben, "cleo", k) >= 10 for k in KINDS),
        timeout=20,
        message="ben gets cleo",
    )
