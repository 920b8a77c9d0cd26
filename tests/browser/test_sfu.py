"""Group calls in three real browsers through the SFU, and the live P2P → SFU switch."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.browser.conftest import ROOT, Server
from tests.browser.support import (
    EVENTUALLY_S,
    POLL_S,
    Participant,
    accept,
    decodes_from,
    join_by_link,
    make_call,
    make_user,
    me,
    new_participant,
    start_call_from_lobby,
    steady,
)
from tests.support.polling import eventually

pytestmark = [pytest.mark.browser, pytest.mark.slow]

DOCS = ROOT / "docs"

# The publish connection's negotiated transport-cc and Chrome's send-side estimate.
PUBLISH_ESTIMATE = """async () => {
  const pc = window.huddle.session.sfu.publishPc;
  if (!/a=rtcp-fb:\\d+ transport-cc/.test(pc.remoteDescription.sdp)) return -1;
  let estimate = null;
  (await pc.getStats()).forEach((s) => {
    if (s.type === 'candidate-pair' && s.nominated && s.availableOutgoingBitrate)
      estimate = s.availableOutgoingBitrate;
  });
  return estimate;
}"""


async def everyone_decodes_everyone(group: dict[str, Participant]) -> None:
    """Each participant's frame counter for every other one keeps rising."""
    checks = []
    for viewer_id, viewer in group.items():
        for source_id in group:
            if source_id != viewer_id:
                before = await viewer.frames_from(source_id)
                checks.append(decodes_from(viewer, source_id, more_than=before))
    await asyncio.gather(*checks)


async def mode_is(participant: Participant, mode: str) -> bool:
    state = await participant.state()
    return bool(state.get("mode") == mode and (mode != "sfu" or state["sfu"]))


@pytest.mark.timeout(240)
async def test_three_way_call_through_the_sfu_survives_a_leave(
    browser: Any, server: Server, people: list[Participant]
) -> None:
    users = [await make_user(server, name) for name in ("ana", "bob", "cyd")]
    call_id = await make_call(server, users[0], *users[1:])
    group: dict[str, Participant] = {}
    for user in users:
        participant = await new_participant(browser, server.base_url, user.name)
        people.append(participant)
        group[user.user_id] = participant
    caller = group[users[0].user_id]
    caller.expect_console("status of 409")  # the caller is joined from initiation…
    caller.expect_console("status of 404")  # …so it asks for TURN servers: none configured
    for user in users:
        await join_by_link(group[user.user_id], call_id, user)

    for participant in group.values():
        await eventually(
            lambda p=participant: mode_is(p, "sfu"),
            message=f"{participant.name} in sfu",
            timeout=EVENTUALLY_S,
            interval=POLL_S,
        )
    await everyone_decodes_everyone(group)
    for participant in group.values():
        state = await participant.state()
        assert state["peers"] == []  # no browser-to-browser connection in a group call
        assert state["sfu"] == {"publish": "connected", "subscribe": "connected"}

    # Chrome estimates its uplink from the SFU's transport-cc feedback: with
    # feedback it can use, the estimate climbs from its 300 kbit/s start.
    async def uplink_estimate() -> float | None:
        value = await caller.page.evaluate(PUBLISH_ESTIMATE)
        return value if value and value > 600_000 else None

    await eventually(
        uplink_estimate,
        message="Chrome's uplink estimate above 600 kbit/s",
        timeout=EVENTUALLY_S,
        interval=POLL_S,
    )
    _, metrics = server.request("GET", "/metrics")
    feedback = re.search(r"^video_call_sfu_twcc_feedback_sent_total (\S+)$", metrics, re.M)
    assert feedback is not None and float(feedback.group(1)) > 10

    # Through the SFU too, a mute shows on the others and stops the audio.
    ana_id = users[0].user_id
    for viewer_id, viewer in group.items():
        if viewer_id != ana_id:
            await eventually(
                lambda v=viewer: v.audio_packets_from(ana_id),
                message="ana's audio arriving",
                timeout=EVENTUALLY_S,
                interval=POLL_S,
            )
    await caller.page.get_by_role("button", name="Mute microphone").click()
    for viewer_id, viewer in group.items():
        if viewer_id == ana_id:
            continue
        tile = viewer.page.locator(f'.tile[data-participant="{ana_id}"]')
        await tile.locator(".badge-muted").wait_for(state="visible")
        await steady(lambda v=viewer: v.audio_packets_from(ana_id))

    # cyd leaves; ana and bob keep receiving each other.
    cyd = group.pop(users[2].user_id)
    await cyd.page.get_by_role("button", name="Leave the call").click()
    await cyd.page.locator("#message-text[data-code=left]").wait_for()
    for participant in group.values():
        tile = participant.page.locator(f'.tile[data-participant="{users[2].user_id}"]')
        await tile.wait_for(state="detached")
    await everyone_decodes_everyone(group)


@pytest.mark.timeout(240)
async def test_inviting_a_third_into_a_p2p_call_switches_everyone_to_the_sfu(
    browser: Any, server: Server, people: list[Participant], tmp_path: Path
) -> None:
    ana = await new_participant(browser, server.base_url, "Ana")
    bob = await new_participant(browser, server.base_url, "Bob")
    cyd = await new_participant(browser, server.base_url, "Cyd")
    people.extend([ana, bob, cyd])

    links = await start_call_from_lobby(ana, ["Bob", "Cyd"], ring=["Bob"])
    await accept(bob, links["Bob"])
    ana_id, bob_id = await me(ana), await me(bob)
    await decodes_from(ana, bob_id)
    await decodes_from(bob, ana_id)
    assert (await ana.state())["mode"] == "p2p"

    # Ana invites Cyd from the call page; Cyd opens the link that appears and accepts.
    await ana.page.get_by_role("button", name="Invite people").click()
    dialog = ana.page.get_by_role("dialog", name="Invite to this call")
    await dialog.get_by_role("checkbox", name="Cyd").check()
    await dialog.get_by_role("button", name="Invite", exact=True).click()
    field = ana.page.get_by_role("textbox", name="Invite link for Cyd", exact=True)
    await accept(cyd, await field.input_value())
    cyd_id = await me(cyd)

    group = {ana_id: ana, bob_id: bob, cyd_id: cyd}
    for participant in group.values():
        await eventually(
            lambda p=participant: mode_is(p, "sfu"),
            message=f"{participant.name} in sfu",
            timeout=EVENTUALLY_S,
            interval=POLL_S,
        )
    await everyone_decodes_everyone(group)
    for participant in group.values():
        assert (await participant.state())["peers"] == []  # P2P connections dropped
    # Nobody reloaded: the pages are the same documents as before the switch.
    assert await ana.page.evaluate("() => performance.getEntriesByType('navigation').length") == 1

    await save_screenshot(ana, tmp_path)


async def save_screenshot(viewer: Participant, tmp_path: Path) -> None:
    """The 3-person call as Ana sees it, stats overlay on. Saved under the test's
    temporary folder, and as docs/screenshot-3-person-call.png when
    HUDDLE_SCREENSHOTS=1 (how the committed one was made)."""
    page = viewer.page
    await page.get_by_role("button", name="Show connection statistics").click()
    await eventually(
        lambda: page.locator(".tile .stats-overlay", has_text="fps").count(),
        message="stats overlay filled",
        timeout=EVENTUALLY_S,
        interval=POLL_S,
    )
    # Let the toasts of the switch fade so they do not cover the tiles.
    await page.locator(".toast").first.wait_for(state="detached", timeout=15_000)
    path = tmp_path / "screenshot-3-person-call.png"
    await page.screenshot(path=str(path))
    if os.environ.get("HUDDLE_SCREENSHOTS") == "1":
        shutil.copyfile(path, DOCS / "screenshot-3-person-call.png")
