"""A client rebuilds its SFU session (aiortc has no ICE restart) on the same signaling path."""

from __future__ import annotations

import gc

import pytest
from aiortc import RTCPeerConnection

from media.loadtest.sfuclient import SfuClient
from media.participant import Participant
from media.signals import PUBLISH, SFU_ID, ice_ufrag
from tests.support.polling import eventually

from .conftest import Call

NAMES = ["ana", "ben", "cleo"]
KINDS = ("audio", "video")


def frames_from(client: SfuClient, source: str, kind: str) -> int:
    """Every frame ``client`` received from ``source`` (over all its tracks so far)."""
    return sum(s.frames for s in client.stats if s.participant_id == source and s.kind == kind)


def receives_all(client: SfuClient, others: list[str], frames: int = 15) -> bool:
    for other in others:
        for kind in KINDS:
            stats = client.received_from(other, kind)
            if stats is None or stats.frames < frames:
                return False
    return True


def open_peer_connections() -> set[int]:
    gc.collect()
    return {
        id(o)
        for o in gc.get_objects()
        if isinstance(o, RTCPeerConnection) and o.signalingState != "closed"
    }


def offers_to(call: Call, participant_id: str, since: int) -> list[str]:
    return [
        str(m["sdp"])
        for pid, m in call.signaling.sent[since:]
        if pid == participant_id and m.get("type") == "offer"
    ]


@pytest.mark.parametrize("failure", ["closed", "silent"])
async def test_rebuilt_session_receives_and_is_received_again(call: Call, failure: str) -> None:
    for name in NAMES:
        await call.join(name)
    for name in NAMES:
        others = [n for n in NAMES if n != name]
        client = call.clients[name]
        await eventually(lambda c=client, o=others: receives_all(c, o), message=f"{name} media")
    old_client = call.clients["cleo"]
    old = call.room.participants["cleo"]
    joined = call.metrics.counts["participants_joined"]

    # cleo's connections "fail". "closed": the client closes both, as the
    # browser does before starting over (aiortc may tell the server through
    # DTLS). "silent": the server hears nothing and its old connections stay
    # up; only the new offer's ICE username tells it the session is new.
    if failure == "closed":
        await old_client.close()
    else:
        call.signaling.clients.pop("cleo")
    marker = len(call.signaling.sent)
    try:
        new_client = await call.join("cleo")  # a fresh offer on the same send path

        new = call.room.participants["cleo"]
        assert new is not old
        assert old.closed
        await eventually(
            lambda: (
                old._publish_pc.connectionState == "closed"
                and old._subscribe_pc.connectionState == "closed"
            ),
            message="old server connections closed",
        )
        # From here on, any media from "cleo" is the new session's.
        baseline = {
            (name, kind): frames_from(call.clients[name], "cleo", kind)
            for name in ("ana", "ben")
            for kind in KINDS
        }

        # The new participant's first subscribe offer carries both others' tracks.
        offers = offers_to(call, "cleo", marker)
        assert offers, "no subscribe offer after the rebuild"
        assert offers[0].count("\r\nm=video ") == 2
        assert offers[0].count("\r\nm=audio ") == 2

        await eventually(
            lambda: receives_all(new_client, ["ana", "ben"]), timeout=30, message="cleo receives"
        )
        assert new_client.sources() == {(o, k) for o in ("ana", "ben") for k in KINDS}
        for other in ("ana", "ben"):
            video = new_client.received_from(other, "video")
            assert video is not None and video.keyframes >= 1, other
        assert not new_client.errors

        for name in ("ana", "ben"):
            client = call.clients[name]
            await eventually(
                lambda c=client, n=name: all(
                    frames_from(c, "cleo", k) >= baseline[(n, k)] + 15 for k in KINDS
                ),
                timeout=30,
                message=f"{name} receives the new cleo",
            )
            other = "ben" if name == "ana" else "ana"
            assert client.sources() == {(p, k) for p in (other, "cleo") for k in KINDS}
            video = client.received_from("cleo", "video")
            assert video is not None and video.keyframes >= 1, name
            # Nothing of the others was lost on the way.
            stats = client.received_from(other, "video")
            assert stats is not None
            before = stats.frames
            await eventually(lambda s=stats, b=before: s.frames >= b + 5, message="still flows")
            assert not client.errors

        # Nothing leaked: three participants, one pair of server connections each.
        assert set(call.room.participants) == set(NAMES)
        assert call.metrics.counts["participants_joined"] == joined
        assert call.metrics.counts["participants_left"] == 0
        assert {up.kind for up in new.published()} == set(KINDS)
        await old_client.close()
        expected = {
            id(pc)
            for p in call.room.participants.values()
            for pc in (p._publish_pc, p._subscribe_pc)
        } | {
            id(pc)
            for c in call.clients.values()
            for pc in (c.publish_pc, c.subscribe_pc)
            if pc is not None
        }
        assert len(expected) == 12
        assert open_peer_connections() == expected
    finally:
        await old_client.close()


async def test_renegotiating_a_healthy_session_keeps_the_participant(call: Call) -> None:
    for name in ("ana", "ben"):
        await call.join(name)
    await eventually(lambda: receives_all(call.clients["ana"], ["ben"]), message="ana media")
    ben = call.clients["ben"]
    participant = call.room.participants["ben"]
    stats = call.clients["ana"].received_from("ben", "video")
    assert stats is not None and ben.publish_pc is not None

    # The same connection offers again (same ICE username): a renegotiation.
    pc = ben.publish_pc
    await pc.setLocalDescription(await pc.createOffer())
    await call.room.handle_signal(
        "ben", {"type": "offer", "target_id": SFU_ID, "pc": PUBLISH, "sdp": pc.localDescription.sdp}
    )
    await eventually(lambda: pc.signalingState == "stable", message="ben applied the answer")

    assert call.room.participants["ben"] is participant
    assert not participant.closed
    assert participant._publish_pc.connectionState == "connected"
    assert {up.kind for up in participant.published()} == set(KINDS)
    before = stats.frames
    await eventually(lambda: stats.frames >= before + 15, message="ben keeps flowing")
    assert call.clients["ana"].received_from("ben", "video") is stats  # the same track


def test_new_session_is_told_by_its_ice_username() -> None:
    sdp = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=ice-ufrag:AbCd\r\na=ice-pwd:x\r\n"
    assert ice_ufrag(sdp) == "AbCd"
    assert ice_ufrag("v=0\r\n") is None


async def test_offer_to_a_never_published_participant_is_not_a_new_session(call: Call) -> None:
    participant: Participant = await call.room.add_participant("ana")
    assert not participant.is_new_session({"sdp": "a=ice-ufrag:one\r\n"})
    await participant.close()
    assert participant.is_new_session({"sdp": "a=ice-ufrag:one\r\n"})
