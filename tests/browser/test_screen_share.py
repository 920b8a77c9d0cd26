"""Screen sharing in real browsers, P2P and through the SFU.

Headless Chromium's getDisplayMedia works with the suite's flags
(``--use-fake-device-for-media-stream`` and ``--use-fake-ui-for-media-stream``
pick a fake 1280x720 "screen" without a picker), so the real button and the
real getDisplayMedia path are driven; nothing is injected.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.browser.conftest import Server
from tests.browser.support import (
    EVENTUALLY_S,
    POLL_S,
    Participant,
    decodes_from,
    join_by_link,
    make_call,
    make_user,
    new_participant,
)
from tests.support.polling import eventually

pytestmark = [pytest.mark.browser, pytest.mark.slow]

# The size of a tile, by its data-participant key.
TILE_BOX = """(key) => {
  const tile = document.querySelector(`.tile[data-participant="${key}"]`);
  if (!tile) return null;
  const box = tile.getBoundingClientRect();
  return {width: box.width, height: box.height};
}"""


async def screen_frames(viewer: Participant, user_id: str) -> int:
    remote = (await viewer.stats()).get(user_id)
    return int(remote["screen"]["framesDecoded"]) if remote else 0


async def screen_decodes(viewer: Participant, user_id: str) -> None:
    """``viewer`` decodes ``user_id``'s screen share (frames keep coming) in a large tile.

    The count starts once the tile is there: a share resumed on a reused transceiver
    continues that receiver's frame counter, and the client attributes it to the screen
    from the moment the offer announcing the share arrives, before the answer is applied
    and the tile shown.
    """
    await viewer.page.locator(f'.tile[data-participant="{user_id}:screen"]').wait_for(
        state="attached", timeout=EVENTUALLY_S * 1000
    )
    before = await screen_frames(viewer, user_id)

    async def rising() -> bool:
        return await screen_frames(viewer, user_id) > before + 10

    await eventually(
        rising,
        message=f"{viewer.name} decoding {user_id}'s screen",
        timeout=EVENTUALLY_S,
        interval=POLL_S,
    )
    screen = await viewer.page.evaluate(TILE_BOX, f"{user_id}:screen")
    camera = await viewer.page.evaluate(TILE_BOX, user_id)
    assert screen is not None, f"{viewer.name} shows no tile for {user_id}'s screen"
    assert camera is not None, f"{viewer.name} shows no tile for {user_id}'s camera"
    assert screen["width"] > camera["width"] and screen["height"] > camera["height"]
    tile = viewer.page.locator(f'.tile[data-participant="{user_id}:screen"]')
    assert await tile.get_attribute("data-source") == "screen"


async def screen_tile_gone(viewer: Participant, user_id: str) -> None:
    await viewer.page.locator(f'.tile[data-participant="{user_id}:screen"]').wait_for(
        state="detached", timeout=EVENTUALLY_S * 1000
    )


async def join_all(
    browser: Any, server: Server, people: list[Participant], names: tuple[str, ...]
) -> tuple[list[str], list[Participant]]:
    users = [await make_user(server, name) for name in names]
    call_id = await make_call(server, users[0], *users[1:])
    pages = []
    for user in users:
        participant = await new_participant(browser, server.base_url, user.name)
        people.append(participant)
        pages.append(participant)
    pages[0].expect_console("status of 409")  # the caller is joined from initiation…
    pages[0].expect_console("status of 404")  # …and asks for TURN servers: none configured
    for user, participant in zip(users, pages, strict=True):
        await join_by_link(participant, call_id, user)
    return [u.user_id for u in users], pages


@pytest.mark.timeout(180)
async def test_a_screen_share_reaches_the_peer_in_a_p2p_call(
    browser: Any, server: Server, people: list[Participant]
) -> None:
    (ana_id, bob_id), (ana, bob) = await join_all(browser, server, people, ("ana", "bob"))
    await decodes_from(bob, ana_id)
    await decodes_from(ana, bob_id)
    assert (await ana.state())["mode"] == "p2p"

    share = ana.page.get_by_role("button", name="Share your screen")
    await share.click()
    await ana.page.get_by_role("button", name="Stop sharing your screen").wait_for()
    await screen_decodes(bob, ana_id)
    # The camera goes on beside the share.
    await decodes_from(bob, ana_id, more_than=await bob.frames_from(ana_id))

    await ana.page.get_by_role("button", name="Stop sharing your screen").click()
    await screen_tile_gone(bob, ana_id)
    await decodes_from(bob, ana_id, more_than=await bob.frames_from(ana_id))
    # Sharing again works on the same connection (the transceiver is reused).
    await share.click()
    await screen_decodes(bob, ana_id)


@pytest.mark.timeout(240)
async def test_a_screen_share_reaches_everyone_through_the_sfu(
    browser: Any, server: Server, people: list[Participant]
) -> None:
    ids, pages = await join_all(browser, server, people, ("ana", "bob", "cyd"))
    ana_id = ids[0]
    ana, viewers = pages[0], pages[1:]
    for viewer in viewers:
        await decodes_from(viewer, ana_id)
    assert (await ana.state())["mode"] == "sfu"

    await ana.page.get_by_role("button", name="Share your screen").click()
    for viewer in viewers:
        await screen_decodes(viewer, ana_id)
        sources = await viewer.page.evaluate(
            """(owner) => [...window.huddle.session.sfu.trackInfo.values()]
                 .filter((t) => t.participant_id === owner).map((t) => t.source).sort()""",
            ana_id,
        )
        assert sources == ["camera", "microphone", "screen"]

    # The browser's own "Stop sharing" ends the track: the client stops the share.
    await ana.page.evaluate(
        "() => window.huddle.session.sending.screen.dispatchEvent(new Event('ended'))"
    )
    await ana.page.get_by_role("button", name="Share your screen").wait_for()
    for viewer in viewers:
        await screen_tile_gone(viewer, ana_id)
        await decodes_from(viewer, ana_id, more_than=await viewer.frames_from(ana_id))
    # Sharing again re-enables the same publish m-line: the SFU forwards it again.
    await ana.page.get_by_role("button", name="Share your screen").click()
    for viewer in viewers:
        await screen_decodes(viewer, ana_id)
