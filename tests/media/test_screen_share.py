"""Screen sharing through the SFU: a second video track, labelled by the publish offer.

Real aiortc peers (``SfuClient``) on 127.0.0.1: a publisher adds a screen
share (a second video m-line, bundled) by renegotiating its publish
connection with ``sources`` saying which mid is the screen; every subscriber
gets camera and screen on two transceivers, each announced with its
``source``; stopping the share (the m-line goes ``inactive``) frees the
subscribers' transceivers, and sharing again re-enables the same m-line.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from media.errors import BadSignal
from media.loadtest.preencoded import EncodedClip
from media.loadtest.sfuclient import SfuClient, TrackStats
from media.signals import PUBLISH, SFU_ID
from tests.support.polling import eventually

from .conftest import Call


def flowing(client: SfuClient, owner: str, source: str, frames: int = 15) -> bool:
    stats = client.received_from(owner, "video", source)
    return stats is not None and stats.frames >= frames


def receiving(client: SfuClient, owner: str, source: str) -> Callable[[], bool]:
    return lambda: flowing(client, owner, source)


def unannounced(client: SfuClient, owner: str, source: str) -> Callable[[], bool]:
    return lambda: source not in entries(client, owner)


def more_frames(stats: TrackStats, frames: int = 15) -> Callable[[], bool]:
    before = stats.frames
    return lambda: stats.frames >= before + frames


def entries(client: SfuClient, owner: str) -> dict[str, dict[str, Any]]:
    """The ``tracks`` entries of ``owner``'s media, by source."""
    return {str(e["source"]): e for e in client.track_info.values() if e["participant_id"] == owner}


async def test_a_screen_share_reaches_every_subscriber_and_stopping_frees_it(
    call: Call, video_clip: EncodedClip
) -> None:
    names = ["ana", "ben", "cleo"]
    for name in names:
        await call.join(name)
    ana = call.clients["ana"]
    viewers = [call.clients["ben"], call.clients["cleo"]]
    for viewer in viewers:
        await eventually(receiving(viewer, "ana", "camera"), message="ana's camera")

    await ana.share_screen(video_clip)
    published = call.room.participants["ana"].published()
    assert sorted(up.source for up in published) == ["camera", "microphone", "screen"]
    screen_mid = next(up.mid for up in published if up.source == "screen")
    for viewer in viewers:
        await eventually(receiving(viewer, "ana", "screen"), message="ana's screen")
        seen = entries(viewer, "ana")
        assert set(seen) == {"camera", "microphone", "screen"}
        assert seen["screen"]["kind"] == "video"
        assert seen["screen"]["mid"] != seen["camera"]["mid"]
        # Each from its own keyframe: a decodable picture on both transceivers.
        screen = viewer.received_from("ana", "video", "screen")
        camera = viewer.received_from("ana", "video", "camera")
        assert screen is not None and screen.keyframes >= 1
        assert camera is not None and camera is not screen
        # The other publisher's media is unaffected and says what it is.
        assert set(entries(viewer, "cleo" if viewer.id == "ben" else "ben")) == {
            "camera",
            "microphone",
        }
    # A late joiner gets the share in its first subscribe offer.
    dan = await call.join("dan")
    await eventually(lambda: flowing(dan, "ana", "screen"), message="dan gets ana's screen")
    await eventually(lambda: flowing(dan, "ana", "camera"), message="dan gets ana's camera")
    viewers.append(dan)

    await ana.stop_screen()
    assert sorted(up.source for up in call.room.participants["ana"].published()) == [
        "camera",
        "microphone",
    ]
    for viewer in viewers:
        await eventually(unannounced(viewer, "ana", "screen"), message="the share announced gone")
        server_side = call.room.participants[viewer.id]
        # The transceiver that carried it is free: nothing the subscriber is
        # told about, and no slot left attached to the ended track.
        assert all(d["source"] != "screen" for d in server_side.subscriptions())
        assert sum(down.source is not None for down in server_side.down_tracks()) == len(
            server_side.subscriptions()
        )
        camera = viewer.received_from("ana", "video", "camera")
        assert camera is not None
        await eventually(more_frames(camera), message="camera goes on")
    # aiortc's publisher keeps sending on the inactive m-line: the SFU drops it.
    for up in call.room.participants["ana"].published():
        assert up.source != "screen"

    # Sharing again re-enables the same publish m-line; subscribers reuse the freed slot.
    slots = {v.id: len(v.subscribe_pc.getTransceivers()) for v in viewers}
    await ana.share_screen(video_clip)
    again = [up for up in call.room.participants["ana"].published() if up.source == "screen"]
    assert [up.mid for up in again] == [screen_mid]
    for viewer in viewers:
        await eventually(receiving(viewer, "ana", "screen"), message="shared again")
        assert len(viewer.subscribe_pc.getTransceivers()) == slots[viewer.id]


async def test_publishers_that_say_nothing_get_default_sources(call: Call) -> None:
    await call.join("ana")
    ben = await call.join("ben")
    await eventually(lambda: flowing(ben, "ana", "camera", frames=3), message="ana's camera")
    assert set(entries(ben, "ana")) == {"camera", "microphone"}


async def test_a_publish_offer_with_bad_sources_is_refused(call: Call) -> None:
    ana = await call.join("ana")
    assert ana.publish_pc is not None
    sdp = ana.publish_pc.localDescription.sdp
    for sources in ({"0": "webcam"}, ["0"], {"0": None}):
        with pytest.raises(BadSignal):
            await call.room.handle_signal(
                "ana",
                {
                    "type": "offer",
                    "target_id": SFU_ID,
                    "pc": PUBLISH,
                    "sdp": sdp,
                    "sources": sources,
                },
            )
