"""1:1 calls in two real browsers: the dev-mode flow, perfect negotiation, P2P media."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.browser.conftest import Server
from tests.browser.support import (
    EVENTUALLY_S,
    POLL_S,
    Participant,
    accept,
    decodes_from,
    me,
    new_participant,
    start_call_from_lobby,
)
from tests.support.polling import eventually

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def sfu_gauges(server: Server) -> dict[str, float]:
    """The SFU's room and participant gauges from /metrics (absent: no SFU wired)."""
    status, text = server.request("GET", "/metrics")
    assert status == 200
    found: dict[str, float] = {}
    for name in ("video_call_sfu_rooms_active", "video_call_sfu_participants_active"):
        match = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
        if match:
            found[name] = float(match.group(1))
    return found


@pytest.mark.timeout(180)
async def test_one_to_one_call_decodes_both_ways_over_p2p(
    browser: Any, server: Server, people: list[Participant]
) -> None:
    ana = await new_participant(browser, server.base_url, "ana")
    bob = await new_participant(browser, server.base_url, "bob")
    people.extend([ana, bob])

    links = await start_call_from_lobby(ana, ["bob"], ring=["bob"])
    await ana.page.get_by_text("Ringing bob").wait_for()
    await accept(bob, links["bob"])
    ana_id, bob_id = await me(ana), await me(bob)

    await decodes_from(ana, bob_id)
    await decodes_from(bob, ana_id)
    # Still rising: media keeps flowing, it did not just start and stall.
    before = await ana.frames_from(bob_id)
    await decodes_from(ana, bob_id, more_than=before)

    for participant in (ana, bob):
        state = await participant.state()
        assert state["mode"] == "p2p"
        assert state["sfu"] is None
        assert len(state["peers"]) == 1
    # The server holds no peer connection for a P2P call.
    gauges = sfu_gauges(server)
    assert gauges == {
        "video_call_sfu_rooms_active": 0,
        "video_call_sfu_participants_active": 0,
    }

    # Tiles show names; the remote tile has video and no failure text.
    tile = ana.page.locator(f'.tile[data-participant="{bob_id}"]')
    await tile.locator(".name", has_text="bob").wait_for()
    await eventually(
        lambda: tile.get_attribute("data-has-video"),
        message="bob's tile shows video",
        timeout=EVENTUALLY_S,
        interval=POLL_S,
    )
    assert await tile.get_attribute("data-has-video") == "true"

    # Leaving ends the call for the last one: bob leaves, ana sees the call end.
    await bob.page.get_by_role("button", name="Leave the call").click()
    await bob.page.locator("#message-text[data-code=left]").wait_for()
    await ana.page.get_by_role("button", name="Leave the call").click()
    await ana.page.locator("#message-text[data-code=left]").wait_for()


@pytest.mark.timeout(180)
async def test_audio_call_has_no_camera_and_carries_audio_both_ways(
    browser: Any, server: Server, people: list[Participant]
) -> None:
    ana = await new_participant(browser, server.base_url, "ana")
    bob = await new_participant(browser, server.base_url, "bob")
    people.extend([ana, bob])
    links = await start_call_from_lobby(ana, ["bob"], ring=["bob"], call_type="audio")
    await accept(bob, links["bob"])
    ana_id, bob_id = await me(ana), await me(bob)

    await eventually(
        lambda: bob.audio_packets_from(ana_id),
        message="ana's audio at bob",
        timeout=EVENTUALLY_S,
        interval=POLL_S,
    )
    await eventually(
        lambda: ana.audio_packets_from(bob_id),
        message="bob's audio at ana",
        timeout=EVENTUALLY_S,
        interval=POLL_S,
    )
    for viewer, other in ((ana, bob_id), (bob, ana_id)):
        assert not await viewer.page.get_by_role("button", name="Turn camera off").is_visible()
        tile = viewer.page.locator(f'.tile[data-participant="{other}"]')
        assert await tile.get_attribute("data-has-video") == "false"
        assert await tile.locator(".avatar").is_visible()
        assert not await tile.locator(".badge-video-off").is_visible()
