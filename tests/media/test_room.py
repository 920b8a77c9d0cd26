"""Real aiortc peers through a Room in one process, ICE on 127.0.0.1."""

from __future__ import annotations

import asyncio

from aiortc import RTCConfiguration

from media.config import MediaConfig
from media.loadtest.preencoded import EncodedClip
from media.loadtest.sfuclient import SfuClient, unbundled_mids
from tests.support.polling import eventually

from .conftest import Call

KINDS = {"audio", "video"}


def receives_all(client: SfuClient, others: list[str], frames: int = 15) -> bool:
    for other in others:
        for kind in ("audio", "video"):
            stats = client.received_from(other, kind)
            if stats is None or stats.frames < frames:
                return False
    return True


async def test_three_participants_receive_each_other(call: Call) -> None:
    names = ["ana", "ben", "cleo"]
    for name in names:
        await call.join(name)
    for name in names:
        others = [n for n in names if n != name]
        client = call.clients[name]
        await eventually(lambda c=client, o=others: receives_all(c, o), message=f"{name} media")
        assert client.sources() == {(o, k) for o in others for k in ("audio", "video")}
        for other in others:
            video = client.received_from(other, "video")
            assert video is not None and video.keyframes >= 1
        # Nothing of one's own comes back.
        assert client.received_from(name, "video") is None


async def test_late_joiner_gets_a_keyframe_asked_for_on_subscribe(
    config: MediaConfig, rare_keyframe_clip: EncodedClip, audio_clip: EncodedClip
) -> None:
    # Publishers send a keyframe only every 3 s on their own: a late joiner
    # starts at once only because the SFU asks each publisher for a keyframe
    # when it subscribes (and holds back what cannot be decoded until then).
    call = Call(config, rare_keyframe_clip, audio_clip)
    publishers = ("ana", "ben", "cleo")
    try:
        for name in publishers:
            await call.join(name)
        await eventually(lambda: receives_all(call.clients["ana"], ["ben", "cleo"]))
        asked_before = {n: call.clients[n].tracks["video"].keyframe_requests for n in publishers}
        late = await call.join("dan")

        def asked_for_dan() -> bool:
            return all(
                call.clients[n].tracks["video"].keyframe_requests > asked_before[n]
                for n in publishers
            )

        await eventually(asked_for_dan, message="a keyframe request to every publisher")
        await eventually(lambda: receives_all(late, list(publishers), frames=1))
        assert late.subscribe_connected_at is not None
        for other in publishers:
            stats = late.received_from(other, "video")
            assert stats is not None and stats.first_frame_at is not None
            # What dan got is decodable: it starts at a keyframe.
            assert stats.keyframes >= 1, (other, stats)
        # The others also start receiving the late joiner.
        await eventually(lambda: receives_all(call.clients["ana"], ["dan"], frames=5))
    finally:
        await call.close()


def first_offer_video_lines(call: Call, participant_id: str) -> int:
    offers = [
        m for pid, m in call.signaling.sent if pid == participant_id and m.get("type") == "offer"
    ]
    assert offers, f"no subscribe offer to {participant_id}"
    return str(offers[0]["sdp"]).count("\r\nm=video ")


async def test_concurrent_joiners_with_default_aiortc_config_receive_every_publisher(
    call: Call,
) -> None:
    # aiortc's default configuration (bundlePolicy "balanced"), as a plain
    # aiortc client uses it: several video m-lines in one subscribe offer
    # must all end up on the one bundled transport (aiortc #1414).
    def plain() -> RTCConfiguration:
        return RTCConfiguration(iceServers=[])

    names = ["ana", "ben", "cleo"]
    await asyncio.gather(*(call.join(n, rtc_configuration=plain()) for n in names))

    def all_published() -> bool:
        participants = call.room.participants
        return all(
            n in participants and {up.kind for up in participants[n].published()} == KINDS
            for n in names
        )

    await eventually(all_published, message="everyone publishes")
    # Joining now, dan's first subscribe offer carries all three video tracks.
    await call.join("dan", rtc_configuration=plain())
    names.append("dan")
    assert first_offer_video_lines(call, "dan") == 3
    for name in names:
        others = [n for n in names if n != name]
        client = call.clients[name]
        await eventually(
            lambda c=client, o=others: receives_all(c, o), timeout=30, message=f"{name} media"
        )
        assert unbundled_mids(client.subscribe_pc) == []
        for other in others:
            video = client.received_from(other, "video")
            assert video is not None and video.keyframes >= 1, (name, other)


async def test_leaving_removes_tracks_from_others(call: Call) -> None:
    for name in ("ana", "ben", "cleo"):
        await call.join(name)
    await eventually(lambda: receives_all(call.clients["ana"], ["ben", "cleo"]))
    await call.leave("cleo")
    for name in ("ana", "ben"):
        client = call.clients[name]
        await eventually(
            lambda c=client: not any(p == "cleo" for p, _ in c.sources()), message="cleo gone"
        )
    # Remaining media keeps flowing.
    stats = call.clients["ana"].received_from("ben", "video")
    assert stats is not None
    before = stats.frames
    await eventually(lambda: stats.frames >= before + 15, message="ben still flows")
    assert set(call.room.participants) == {"ana", "ben"}


async def test_last_participant_out_closes_room(call: Call) -> None:
    await call.join("ana")
    await call.join("ben")
    await eventually(lambda: receives_all(call.clients["ana"], ["ben"], frames=3))
    await call.leave("ana")
    assert not call.room.closed
    await call.leave("ben")
    assert call.room.closed
    assert call.metrics.counts["rooms_closed"] == 1
    await call.room.close()  # idempotent: returns, and closes nothing twice
    assert call.metrics.counts["rooms_closed"] == 1
    assert call.metrics.counts["participants_left"] == 2


async def test_a_viewer_enters_receive_only_without_a_publish_connection(call: Call) -> None:
    await call.join("ana")
    await call.join("ben")
    viewer = await call.join("viewer", publish=False)
    assert viewer.publish_pc is None  # it sent {"type": "subscribe"} instead of an offer
    participant = call.room.participants["viewer"]
    assert participant._publish_pc.getTransceivers() == []

    def receiving() -> bool:
        return all(
            (s := viewer.received_from(who, "video")) is not None and s.frames > 5
            for who in ("ana", "ben")
        )

    await eventually(receiving, message="the viewer receiving both publishers")
    assert not participant.published()
    assert ("viewer", "video") not in call.clients["ana"].sources()
    await call.room.handle_signal(
        "viewer", {"type": "subscribe", "target_id": "sfu"}
    )  # again: no-op
    assert call.room.participants["viewer"] is participant
