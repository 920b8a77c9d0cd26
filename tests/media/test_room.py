"""Real aiortc peers through a Room in one process, ICE on 127.0.0.1."""

from __future__ import annotations

import time

from media.peers import SfuClient

from .conftest import Call, eventually


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
        await eventually(lambda c=client, o=others: receives_all(c, o), what=f"{name} media")
        assert client.sources() == {(o, k) for o in others for k in ("audio", "video")}
        for other in others:
            video = client.received_from(other, "video")
            assert video is not None and video.keyframes >= 1
        # Nothing of one's own comes back.
        assert client.received_from(name, "video") is None


async def test_late_joiner_gets_video_within_a_second(call: Call) -> None:
    for name in ("ana", "ben", "cleo"):
        await call.join(name)
    await eventually(lambda: receives_all(call.clients["ana"], ["ben", "cleo"]))
    late = await call.join("dan")
    await eventually(lambda: receives_all(late, ["ana", "ben", "cleo"], frames=1))
    for other in ("ana", "ben", "cleo"):
        stats = late.received_from(other, "video")
        assert stats is not None and stats.first_frame_delay is not None
        # Announced (subscribe offer) to first forwarded frame, including ICE
        # and DTLS setup of the new connection.
        assert stats.first_frame_delay < 1.0, (other, stats.first_frame_delay)
    # The others also start receiving the late joiner.
    await eventually(lambda: receives_all(call.clients["ana"], ["dan"], frames=5))


async def test_leaving_removes_tracks_from_others(call: Call) -> None:
    for name in ("ana", "ben", "cleo"):
        await call.join(name)
    await eventually(lambda: receives_all(call.clients["ana"], ["ben", "cleo"]))
    await call.leave("cleo")
    for name in ("ana", "ben"):
        client = call.clients[name]
        await eventually(
            lambda c=client: not any(p == "cleo" for p, _ in c.sources()), what="cleo gone"
        )
    # Remaining media keeps flowing.
    stats = call.clients["ana"].received_from("ben", "video")
    assert stats is not None
    before = stats.frames
    await eventually(lambda: stats.frames >= before + 15, what="ben still flows")
    assert set(call.room.participants) == {"ana", "ben"}


async def test_last_participant_out_closes_room(call: Call) -> None:
    await call.join("ana")
    await call.join("ben")
    await eventually(lambda: receives_all(call.clients["ana"], ["ben"], frames=3))
    await call.leave("ana")
    assert not call.room.closed
    await call.leave("ben")
    assert call.room.closed
    started = time.monotonic()
    await call.room.close()  # idempotent
    assert time.monotonic() - started < 1
