"""Who owns whom in a room: races between joins and leaves, failures reported upward.

Real aiortc peers through a Room in one process, ICE on 127.0.0.1.
"""

from __future__ import annotations

import ast
import asyncio
import dataclasses
import re
from pathlib import Path

from media.config import MediaConfig
from media.loadtest.preencoded import EncodedClip
from media.loadtest.sfuclient import SfuClient
from media.signals import SFU_ID
from tests.support.polling import eventually

from .conftest import Call

MEDIA = Path(__file__).resolve().parents[2] / "media"


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
            message = {**message, "sdp": re.sub(r"(a=fingerprint:sha-256 )(..)", r"\g<1>00", sdp)}
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


# Parents use their children's public methods only: the room its
# participants, a participant its tracks and slots, a slot its sender.
OWNERS = ("room.py", "participant.py", "subscription.py", "sfu.py", "feedback.py")


def private_uses(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Attribute) or not node.attr.startswith("_"):
            continue
        if node.attr.startswith("__") and node.attr.endswith("__"):
            continue
        if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
            continue
        found.append(f"{path.name}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_owners_call_only_public_methods_of_what_they_own() -> None:
    assert [use for name in OWNERS for use in private_uses(MEDIA / name)] == []
