"""Every refusal ends on a screen that says why: ended call, full call, bad links."""

from __future__ import annotations

from typing import Any

import pytest

from tests.browser.conftest import Server
from tests.browser.support import (
    EVENTUALLY_S,
    POLL_S,
    Participant,
    api,
    call_url,
    make_call,
    make_user,
    new_participant,
)
from tests.support.polling import eventually

pytestmark = pytest.mark.browser


async def message_of(participant: Participant, code: str) -> str:
    """Wait for the end-of-call screen with ``code``; return its text."""
    locator = participant.page.locator(f'#message-text[data-code="{code}"]')
    await locator.wait_for(timeout=30_000)
    text: str = await locator.inner_text()
    return text


async def test_joining_an_ended_call_says_it_has_ended(
    browser: Any, server: Server, people: list[Participant]
) -> None:
    ana, bob = await make_user(server, "ana"), await make_user(server, "bob")
    call_id = await make_call(server, ana, bob)
    status, _ = await api(server, "POST", f"/v1/calls/{call_id}/end", ana.token)
    assert status == 200

    page = await new_participant(browser, server.base_url, "bob")
    page.expect_console("status of 410")  # the refused join, logged by Chromium
    people.append(page)
    await page.page.goto(call_url(call_id, bob.token))
    assert await message_of(page, "call_ended") == "This call has ended."
    assert await page.page.get_by_role("alert").inner_text() == "This call has ended."
    # No camera left running behind the message.
    assert (await page.state())["screen"] == "message"


async def test_joining_a_full_call_says_it_is_full(
    browser: Any, server: Server, people: list[Participant]
) -> None:
    # The test server allows 3 participants (HUDDLE_MAX_PARTICIPANTS=3).
    ana, bob, cy, dan = [await make_user(server, n) for n in ("ana", "bob", "cy", "dan")]
    call_id = await make_call(server, ana, bob, cy, dan)
    for user in (bob, cy):
        status, body = await api(server, "POST", f"/v1/calls/{call_id}/join", user.token)
        assert status == 200, body

    page = await new_participant(browser, server.base_url, "dan")
    page.expect_console("status of 409")
    people.append(page)
    await page.page.goto(call_url(call_id, dan.token))
    text = await message_of(page, "participant_limit_reached")
    assert text == "This call is full: no more participants can join."


async def test_an_invite_link_for_someone_else_says_not_invited(
    browser: Any, server: Server, people: list[Participant]
) -> None:
    ana, bob, eve = [await make_user(server, n) for n in ("ana", "bob", "eve")]
    call_id = await make_call(server, ana, bob)

    page = await new_participant(browser, server.base_url, "eve")
    page.expect_console("status of 403")
    people.append(page)
    await page.page.goto(call_url(call_id, eve.token))
    assert await message_of(page, "not_invited") == "You are not invited to this call."


async def test_declining_ends_a_one_to_one_call_for_the_caller(
    browser: Any, server: Server, people: list[Participant]
) -> None:
    ana, bob = await make_user(server, "ana"), await make_user(server, "bob")
    call_id = await make_call(server, ana, bob)
    caller = await new_participant(browser, server.base_url, "ana")
    callee = await new_participant(browser, server.base_url, "bob")
    people.extend([caller, callee])

    await caller.page.goto(call_url(call_id, ana.token))
    caller.expect_console("status of 409")  # the caller is joined from initiation
    caller.expect_console("status of 404")  # and gets no TURN servers: none configured
    await caller.page.locator("#screen-call").wait_for()

    async def caller_signaling_open() -> bool:
        return (await caller.state()).get("signaling") == "open"

    # Decline only once the caller is connected: otherwise its handshake is
    # refused with 410 (logged by Chromium), a different scenario.
    await eventually(
        caller_signaling_open,
        message="caller's signaling open",
        timeout=EVENTUALLY_S,
        interval=POLL_S,
    )
    await callee.page.goto(call_url(call_id, bob.token, ring=True))
    await callee.page.get_by_role("heading", name="ana is calling").wait_for()
    await callee.page.get_by_role("button", name="Decline").click()
    assert await message_of(callee, "declined") == "You declined the call."
    assert await message_of(caller, "call_ended") == "The call was declined."
