"""The whole stack at once: HTTP lifecycle, WebSocket signaling and the SFU, with
real aiortc peers on 127.0.0.1."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Iterator

import pytest

from media.aiortc_compat import restrict_host_addresses
from media.loadtest.peers import SignaledPeer
from media.loadtest.preencoded import EncodedClip, opus_clip, vp8_clip
from server.config import MediaSettings
from server.wiring.media import SFU
from tests.conftest import AppFactory, make_config
from tests.support.api import Api, User
from tests.support.polling import eventually

pytestmark = [pytest.mark.parametrize("database_url", ["sqlite"], indirect=True), pytest.mark.slow]


@pytest.fixture(scope="module")
def clips() -> tuple[EncodedClip, EncodedClip]:
    return (
        vp8_clip(frames=60, width=320, height=240, bitrate=300_000, keyframe_every=30),
        opus_clip(),
    )


@pytest.fixture(autouse=True)
def restore_ice_hosts() -> Iterator[None]:
    yield
    restrict_host_addresses([])  # the SFU restricts them process-wide


@pytest.fixture
async def peers() -> AsyncIterator[list[SignaledPeer]]:
    opened: list[SignaledPeer] = []
    yield opened
    for peer in reversed(opened):
        await peer.close()


async def connect(
    base: str, call_id: str, user: User, *, video: EncodedClip, audio: EncodedClip
) -> SignaledPeer:
    """The load tester's peer, leaving non-SFU messages in ``signaling`` for the test."""
    return await SignaledPeer.connect(
        base, call_id, user.token, user.user_id, video=video, audio=audio, sfu_messages_only=True
    )


def receives(peer: SignaledPeer, others: list[str], frames: int = 10) -> bool:
    for other in others:
        for kind in ("audio", "video"):
            stats = peer.media.received_from(other, kind)
            if stats is None or stats.frames < frames:
                return False
    return True


async def _app(make_client: AppFactory, database_url: str) -> Api:
    config = dataclasses.replace(
        make_config(database_url), media=MediaSettings(ice_hosts=("127.0.0.1",))
    )
    return Api(await make_client(config=config))


async def test_group_call_media_flows_through_the_sfu(
    make_client: AppFactory,
    database_url: str,
    clips: tuple[EncodedClip, EncodedClip],
    peers: list[SignaledPeer],
) -> None:
    api = await _app(make_client, database_url)
    base = str(api.client.make_url("/"))
    ana, bob, cid = await api.users("ana", "bob", "cid")
    call = await api.group_call(ana, bob, cid)
    assert call["mode"] == "sfu"
    for user in (bob, cid):
        await api.action(call["call_id"], "join", user)
    video, audio = clips
    for user in (ana, bob, cid):
        peer = await connect(base, call["call_id"], user, video=video, audio=audio)
        peers.append(peer)
        mode = await peer.signaling.receive("mode", timeout=10)
        assert mode["mode"] == "sfu"
        await peer.media.publish()

    ids = [p.user_id for p in peers]
    for peer in peers:
        others = [i for i in ids if i != peer.user_id]
        await eventually(
            lambda p=peer, o=others: receives_all(p, o),
            timeout=30,
            message=f"{peer.user_id} receives both others",
        )
    sfu = api.client.app[SFU]
    assert list(sfu.rooms) == [call["call_id"]]

    # One leaves over HTTP: the others stop getting its tracks, keep each other's.
    await api.action(call["call_id"], "leave", cid)
    remaining = peers[:2]

    async def cid_gone() -> bool:
        return all((cid.user_id, "video") not in p.media.sources() for p in remaining)

    await eventually(cid_gone, timeout=20)
    before = remaining[0].media.received_from(bob.user_id, "video")
    assert before is not None
    count = before.frames
    await eventually(lambda: _more_frames(remaining[0], bob.user_id, count), timeout=10)

    # The last ones out end the call, and the room releases everything.
    await api.action(call["call_id"], "leave", bob)
    await api.action(call["call_id"], "leave", ana)

    async def room_closed() -> bool:
        return not sfu.rooms

    await eventually(room_closed, timeout=20)


def receives_all(peer: SignaledPeer, others: list[str]) -> bool:
    return receives(peer, others)


async def _more_frames(peer: SignaledPeer, source: str, count: int) -> bool:
    stats = peer.media.received_from(source, "video")
    return stats is not None and stats.frames > count + 10


async def test_one_to_one_is_p2p_then_switches_to_sfu_when_a_third_joins(
    make_client: AppFactory,
    database_url: str,
    clips: tuple[EncodedClip, EncodedClip],
    peers: list[SignaledPeer],
) -> None:
    api = await _app(make_client, database_url)
    base = str(api.client.make_url("/"))
    ana, bob, cid = await api.users("ana", "bob", "cid")
    conversation_id = await api.conversation(ana, bob, cid)
    call = await api.initiate(ana, conversation_id, bob)
    call_id = call["call_id"]
    await api.action(call_id, "join", bob)
    video, audio = clips
    for user in (ana, bob):
        peer = await connect(base, call_id, user, video=video, audio=audio)
        peers.append(peer)
        assert (await peer.signaling.receive("mode", timeout=10))["mode"] == "p2p"

    # P2P: offers relay between the two; the SFU refuses and holds nothing.
    await peers[0].signaling.send(
        {
            "type": "offer",
            "target_id": bob.user_id,
            "sdp": "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n",
        }
    )
    relayed = await peers[1].signaling.receive("offer", timeout=10)
    assert relayed["sender_id"] == ana.user_id
    await peers[0].media.publish()
    refused = await peers[0].signaling.receive("error", timeout=10)
    assert refused["code"] == "wrong_mode"
    sfu = api.client.app[SFU]
    assert not sfu.rooms

    # A third is invited into the running call and joins: everyone is told "sfu".
    await api.call(
        "POST", f"/v1/calls/{call_id}/invite", bob, json={"callee_ids": [cid.user_id]}, expect=200
    )
    assert (await api.action(call_id, "join", cid))["mode"] == "sfu"
    for peer in peers:
        switched = await peer.signaling.receive("mode", timeout=10)
        assert switched["mode"] == "sfu"
    # Clients drop their P2P connection and publish to the SFU (a fresh client here).
    await peers[0].close()
    peers[0] = await connect(base, call_id, ana, video=video, audio=audio)
    third = await connect(base, call_id, cid, video=video, audio=audio)
    peers.append(third)
    for peer in peers:
        if peer.media.publish_pc is None:
            await peer.media.publish()
    ids = [ana.user_id, bob.user_id, cid.user_id]
    for peer in peers:
        others = [i for i in ids if i != peer.user_id]
        await eventually(
            lambda p=peer, o=others: receives_all(p, o),
            timeout=30,
            message=f"{peer.user_id} receives both others after the switch",
        )
    assert list(sfu.rooms) == [call_id]
