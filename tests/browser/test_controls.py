"""In-call controls and resilience in real browsers: mute, camera, reconnecting signaling."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from tests.browser.conftest import Server
from tests.browser.support import (
    EVENTUALLY_S,
    POLL_S,
    Participant,
    api,
    decodes_from,
    join_by_link,
    make_call,
    make_user,
    new_participant,
    steady,
)
from tests.support.polling import eventually

pytestmark = [pytest.mark.browser, pytest.mark.slow]

PHONE = (390, 740)  # bob uses a phone-sized window
GRACE_S = 10.0  # HUDDLE_DISCONNECT_GRACE's default, which the test server keeps


async def two_in_a_call(
    browser: Any, server: Server, people: list[Participant]
) -> tuple[Participant, Participant, str, str, str]:
    ana_user, bob_user = await make_user(server, "ana"), await make_user(server, "bob")
    call_id = await make_call(server, ana_user, bob_user)
    ana = await new_participant(browser, server.base_url, "ana")
    bob = await new_participant(browser, server.base_url, "bob", viewport=PHONE)
    people.extend([ana, bob])
    ana.expect_console("status of 409")  # the caller is joined from initiation…
    ana.expect_console("status of 404")  # …so it asks for TURN servers: none configured
    await join_by_link(ana, call_id, ana_user)
    await join_by_link(bob, call_id, bob_user)
    await decodes_from(ana, bob_user.user_id)
    await decodes_from(bob, ana_user.user_id)
    return ana, bob, ana_user.user_id, bob_user.user_id, call_id


@pytest.mark.timeout(180)
async def test_mute_shows_on_the_other_side_and_stops_the_audio(
    browser: Any, server: Server, people: list[Participant]
) -> None:
    ana, bob, ana_id, _, _ = await two_in_a_call(browser, server, people)
    audio = lambda: bob.audio_packets_from(ana_id)  # noqa: E731
    flowing = await audio()
    await eventually(
        lambda: _more(audio, flowing),
        message="ana's audio reaching bob",
        timeout=EVENTUALLY_S,
        interval=POLL_S,
    )

    await ana.page.get_by_role("button", name="Mute microphone").click()
    tile = bob.page.locator(f'.tile[data-participant="{ana_id}"]')
    await tile.locator(".badge-muted").wait_for(state="visible")
    assert await tile.get_attribute("data-muted") == "true"
    assert (
        await ana.page.get_by_role("button", name="Unmute microphone").get_attribute("aria-pressed")
        == "true"
    )
    stopped = await steady(audio)
    # Video keeps flowing while muted.
    await decodes_from(bob, ana_id, more_than=await bob.frames_from(ana_id))

    # Keyboard: focus the toggle and press Enter.
    await ana.page.get_by_role("button", name="Unmute microphone").focus()
    await ana.page.keyboard.press("Enter")
    await tile.locator(".badge-muted").wait_for(state="hidden")
    await eventually(
        lambda: _more(audio, stopped),
        message="ana's audio flowing again",
        timeout=EVENTUALLY_S,
        interval=POLL_S,
    )


@pytest.mark.timeout(180)
async def test_call_fits_a_phone_and_controls_are_labelled(
    browser: Any, server: Server, people: list[Participant]
) -> None:
    _, bob, ana_id, _, _ = await two_in_a_call(browser, server, people)
    page = bob.page
    # No sideways scrolling at phone width; both tiles and every control on screen.
    assert await page.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth")
    for tile in (f'.tile[data-participant="{ana_id}"]', ".tile.self"):
        assert await page.locator(tile).is_visible()
    toolbar = page.get_by_role("toolbar", name="Call controls")
    for name in ("Mute microphone", "Turn camera off", "Invite people", "Leave the call"):
        button = toolbar.get_by_role("button", name=name)
        assert await button.is_visible()
        box = await button.bounding_box()
        assert box is not None and box["x"] + box["width"] <= PHONE[0]
        assert box["height"] >= 40  # comfortable touch target
    # Tab reaches the controls in order.
    await toolbar.get_by_role("button", name="Mute microphone").focus()
    await page.keyboard.press("Tab")
    focused = await page.evaluate("() => document.activeElement.getAttribute('aria-label')")
    assert focused == "Turn camera off"


@pytest.mark.timeout(180)
async def test_camera_off_shows_a_placeholder_not_a_blank_tile(
    browser: Any, server: Server, people: list[Participant]
) -> None:
    ana, bob, ana_id, _, _ = await two_in_a_call(browser, server, people)
    await ana.page.get_by_role("button", name="Turn camera off").click()
    tile = bob.page.locator(f'.tile[data-participant="{ana_id}"]')
    await tile.locator(".badge-video-off").wait_for(state="visible")
    await tile.locator(".placeholder .avatar", has_text="A").wait_for(state="visible")
    frames = await steady(lambda: bob.frames_from(ana_id))

    await ana.page.get_by_role("button", name="Turn camera on").click()
    await tile.locator(".badge-video-off").wait_for(state="hidden")
    await decodes_from(bob, ana_id, more_than=frames)


@pytest.mark.timeout(180)
async def test_signaling_reconnects_and_keeps_the_seat(
    browser: Any, server: Server, people: list[Participant]
) -> None:
    ana, bob, ana_id, bob_id, call_id = await two_in_a_call(browser, server, people)
    dropped = time.monotonic()
    await bob.page.evaluate("() => window.huddle.session.signaling.dropSocket()")
    await eventually(
        lambda: _reconnected(bob),
        message="bob's signaling reconnected",
        timeout=EVENTUALLY_S,
        interval=POLL_S,
    )
    # Past the server's disconnect grace period (10 s)…
    await asyncio.sleep(max(0.0, dropped + GRACE_S + 2 - time.monotonic()))
    # …bob is still in the call…
    status, call = await api(server, "GET", f"/v1/calls/{call_id}", (await _token(bob)))
    assert status == 200
    bob_row = next(p for p in call["participants"] if p["user_id"] == bob_id)
    assert bob_row["left_at"] is None
    # …and media flows both ways.
    await decodes_from(ana, bob_id, more_than=await ana.frames_from(bob_id))
    await decodes_from(bob, ana_id, more_than=await bob.frames_from(ana_id))


async def _more(sample: Any, than: int) -> bool:
    return bool(await sample() > than + 5)


async def _reconnected(participant: Participant) -> bool:
    state = await participant.state()
    return bool(state["signaling"] == "open" and state["reconnects"] >= 1)


async def _token(participant: Participant) -> str:
    token: str = await participant.page.evaluate("() => window.huddle.session.api.token")
    return token


@pytest.mark.timeout(180)
async def test_reloading_the_page_keeps_the_seat_and_media_resumes(
    browser: Any, server: Server, people: list[Participant]
) -> None:
    ana, bob, ana_id, bob_id, _ = await two_in_a_call(browser, server, people)
    await bob.page.reload()
    await bob.page.locator("#screen-call").wait_for()
    # The fresh page decodes ana (a new connection), then ana decodes the new bob.
    await decodes_from(bob, ana_id)
    await decodes_from(ana, bob_id, more_than=await ana.frames_from(bob_id))
    state = await bob.state()
    assert (state["mode"], state["status"]) == ("p2p", "connected")
