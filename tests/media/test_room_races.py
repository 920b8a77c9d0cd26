"""Who owns whom in a room: races between joins and leaves, failures reported upward.

Real aiortc peers through a Room in one process, ICE on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re

import pytest

from media.config import MediaConfig
from media.loadtest.preencoded import EncodedClip
from media.loadtest.sfuclient import SfuClient
from media.signals import SFU_ID
from tests.support.polling import eventually

from .conftest import Call


def errors_to(call: Call, participant_id: str) -> list[str]:
    return [
        str(m.get("code"))
        for pid, m in call.signaling.sent
        if pid == participant_id and m.get("type") == "error"
    ]


def receives_video_from(client: SfuClient, other: str, frames: int = 3) -> bool:
    stats = client.received_from(other, "video")
    return stats is not None and stats.frames >= frames


async def test_a_participant_joining_while_the_last_one_leaves_keeps_the_room(call: Call) -> None:
    await call.join("ana")
    ana = call.room.participants["ana"]
    leaving = asyncio.get_running_loop().create_task(call.room.remove_participant("ana"))
    await asyncio.sleep(0)  # the leave runs until it awaits ana's connections closing
    assert ana.closed and "ana" not in call.room.participants
    assert not call.room.closed
    viewer = await call.join("ben", publish=False)  # admitted while ana's leave is awaited
    await leaving

    assert not call.room.closed
    ben = call.room.participants["ben"]
    assert not ben.closed
    # ... and the room works for ben: a new publisher reaches him.
    await call.join("cleo")
    await eventually(lambda: receives_video_from(viewer, "cleo"), message="ben receives cleo")
    await call.leave("cleo")
    await call.leave("ben")
    assert call.room.closed  # the last one out still closes it


async def test_a_participant_whose_connection_fails_is_removed(
    call: Call, video_clip: EncodedClip
) -> None:
    await call.join("ana")

    async def send(message: dict[str, object]) -> None:
        if message.get("type") == "offer":
            # Announce a certificate other than the one its DTLS presents:
            # the server's handshake fails (fingerprint mismatch).
            sdp = str(message["sdp"])
            first = re.search(r"a=fingerprint:sha-256 (..)", sdp)
            assert first is not None
            other = "11" if first[1] == "00" else "00"  # a first byte it does not have
            message = {**message, "sdp": sdp[: first.start(1)] + other + sdp[first.end(1) :]}
            assert message["sdp"] != sdp
        await call.room.handle_signal("mallory", message)

    client = SfuClient(
        "mallory", send, rtc_configuration=call.config.rtc_configuration(), video=video_clip
    )
    call.clients["mallory"] = client
    call.signaling.clients["mallory"] = client
    await client.publish()
    mallory = call.room.participants["mallory"]

    await eventually(
        lambda: "mallory" not in call.room.participants, timeout=30, message="mallory removed"
    )
    assert mallory.closed
    assert mallory.failure is not None and mallory.failure.code == "sfu_session_failed"
    assert errors_to(call, "mallory") == ["sfu_session_failed"]
    assert call.metrics.counts["participants_left"] == 1
    # The others carry on; ana is not offered mallory's tracks any more.
    assert set(call.room.participants) == {"ana"}
    assert not call.room.closed
    ana = call.room.participants["ana"]
    await eventually(
        lambda: not any(t.get("participant_id") == "mallory" for t in ana.subscriptions()),
        message="mallory's tracks gone from ana's",
    )


async def test_no_subscribe_answer_removes_the_participant_after_the_timeout(
    config: MediaConfig, video_clip: EncodedClip, audio_clip: EncodedClip
) -> None:
    call = Call(dataclasses.replace(config, negotiation_timeout=1.0), video_clip, audio_clip)
    try:
        await call.join("ana")
        # A receive-only participant whose client never answers (its offers
        # go nowhere: no client behind this signaling id).
        await call.room.handle_signal("mute", {"type": "subscribe", "target_id": SFU_ID})
        mute = call.room.participants["mute"]
        await eventually(lambda: mute.offers_sent == 1, message="the subscribe offer")
        await eventually(
            lambda: "mute" not in call.room.participants, timeout=15, message="mute removed"
        )
        assert mute.closed
        assert errors_to(call, "mute") == ["negotiation_timeout"]
        assert set(call.room.participants) == {"ana"}
        assert not call.room.closed
    finally:
        await call.close()


async def test_a_participant_whose_negotiation_task_dies_is_removed(
    call: Call, monkeypatch: pytest.MonkeyPatch
) -> None:
    viewer = await call.join("ben", publish=False)  # nothing to receive yet: no offer
    ben = call.room.participants["ben"]
    assert ben.offers_sent == 0

    async def broken_offer() -> None:
        raise RuntimeError("createOffer broke")

    # A bug (or aiortc failing) inside ben's negotiation task, at its next offer.
    monkeypatch.setattr(ben._subscribe_pc, "createOffer", broken_offer)
    await call.join("ana")  # ana publishes: ben's task offers, and dies

    await eventually(lambda: "ben" not in call.room.participants, message="ben removed")
    assert ben.closed
    assert ben.failure is not None and ben.failure.code == "sfu_session_failed"
    assert errors_to(call, "ben") == ["sfu_session_failed"]
    await eventually(lambda: [e["code"] for e in viewer.errors] == ["sfu_session_failed"])
    assert set(call.room.participants) == {"ana"} and not call.room.closed
