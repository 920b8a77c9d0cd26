"""``resume``: a client whose socket came back asks whether its SFU session is still there."""

from __future__ import annotations

import pytest

from media.config import MediaConfig
from media.errors import SessionLost
from media.sfu import Sfu
from media.signals import SFU_ID
from tests.support.polling import eventually

from .conftest import Call

RESUME = {"type": "resume", "target_id": SFU_ID}


async def test_a_participant_in_the_room_resumes_silently(call: Call) -> None:
    client = await call.join("ana")
    await eventually(lambda: client.publish_pc.connectionState == "connected")
    sent = len(call.signaling.sent)
    await call.room.handle_signal("ana", dict(RESUME))
    assert call.signaling.sent[sent:] == []
    assert "ana" in call.room.participants


async def test_someone_the_room_does_not_hold_is_told_to_start_over(call: Call) -> None:
    await call.join("ana")
    with pytest.raises(SessionLost) as caught:
        await call.room.handle_signal("bob", dict(RESUME))
    assert caught.value.code == "sfu_session_lost"
    assert "bob" not in call.room.participants


class Port:
    async def send_to(self, call_id: str, participant_id: str, message: dict[str, object]) -> None:
        raise AssertionError("nothing is sent for a resume")

    async def send_error(self, call_id: str, participant_id: str, error: object) -> None:
        raise AssertionError("a resume's refusal is raised to the caller")


async def test_a_node_without_the_room_does_not_open_one_for_a_resume(config: MediaConfig) -> None:
    sfu = Sfu(config, Port())
    try:
        with pytest.raises(SessionLost):
            await sfu.handle_signal("call-1", "ana", dict(RESUME))
        assert not sfu.has_room("call-1")
    finally:
        await sfu.close()
