"""A participant's network changes mid-call: ICE restarts, the call goes on (issue 15, item 4).

Three participants in an SFU call. Ana and Bob run in a Chromium on this
machine; Cyd runs in a Chromium inside a network namespace of the test's
own, linked to the server by a veth pair (tests/browser/netlink.py). Cyd's
address changes (the new one added, the old one removed), as a phone moving
between networks: its media connections and its signaling socket die with
the old address. The client notices (`disconnected`, a ping unanswered),
reopens the socket, resumes its SFU session and restarts ICE on both
connections (docs/protocol.md "ICE restart"); the SFU keeps the participant,
its tracks and subscriptions. Measured: the media gap each way, printed
with -s; bounded by GAP_S.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import pytest

from tests.browser import farlink, netlink
from tests.browser.conftest import Server
from tests.browser.farlink import video_of
from tests.browser.support import (
    EVENTUALLY_S,
    POLL_S,
    Participant,
    join_by_link,
    make_call,
    make_user,
    new_participant,
)
from tests.browser.test_simulcast import in_sfu
from tests.support.polling import eventually

pytestmark = [pytest.mark.browser, pytest.mark.slow]

# The server on the pair's address, and a Chromium on each side of it.
link, server, browsers = farlink.link, farlink.server, farlink.browsers

#: Media flows again within this long of the address change, both ways.
GAP_S = 10.0
#: How often the frame counters are read while measuring a gap.
SAMPLE_S = 0.1


async def gap(viewer: Participant, source_id: str, since: float, within: float) -> float:
    """Seconds from ``since`` until ``viewer`` decodes ``source_id``'s video steadily again
    (10 new frames in a row after the longest stretch without one)."""
    last_frames = (await video_of(viewer, source_id))[0]
    last_change = since
    longest, steady = 0.0, 0
    while time.monotonic() < since + within:
        await asyncio.sleep(SAMPLE_S)  # a sampling period, not a wait for a state
        frames = (await video_of(viewer, source_id))[0]
        now = time.monotonic()
        if frames > last_frames:
            if now - last_change > 0.5:  # a stall ended: count afresh
                longest, steady = max(longest, now - since), 0
            steady += frames - last_frames
            last_frames, last_change = frames, now
            if longest and steady >= 10:
                return longest
    raise AssertionError(f"{viewer.name}: no steady video of {source_id} within {within:g} s")


@pytest.mark.timeout(300)
async def test_a_network_change_restarts_ice_and_the_call_goes_on(
    browsers: tuple[Any, Any], server: Server, link: netlink.Link
) -> None:
    near, far = browsers
    users = [await make_user(server, name) for name in ("ana", "bob", "cyd")]
    ana_id, bob_id, cyd_id = (u.user_id for u in users)
    call_id = await make_call(server, users[0], *users[1:])
    group: dict[str, Participant] = {}
    for user, browser in zip(users, (near, near, far), strict=True):
        group[user.user_id] = await new_participant(browser, server.base_url, user.name)
    ana, cyd = group[ana_id], group[cyd_id]
    ana.expect_console("status of 409")  # the caller is joined from initiation…
    ana.expect_console("status of 404")  # …and asks for TURN servers: none configured
    # The dead socket's reconnect, as Chromium logs it.
    cyd.expect_console("WebSocket")
    try:
        for user in users:
            await join_by_link(group[user.user_id], call_id, user)
        for participant in group.values():
            await eventually(
                lambda p=participant: in_sfu(p),
                message=f"{participant.name} connected to the SFU",
                timeout=EVENTUALLY_S,
                interval=POLL_S,
            )
        for viewer, source in ((cyd, ana_id), (ana, cyd_id), (cyd, bob_id)):
            await eventually(
                lambda v=viewer, s=source: _decoding(v, s),
                message=f"{viewer.name} decoding {s_name(group, source)}",
                timeout=EVENTUALLY_S,
                interval=POLL_S,
            )
        before = await cyd.state()

        # Cyd moves to another address: everything of the old one is dead.
        changed_at = time.monotonic()
        link.move()
        down, up = await asyncio.gather(
            gap(cyd, ana_id, changed_at, GAP_S + 20), gap(ana, cyd_id, changed_at, GAP_S + 20)
        )
        print(
            f"network change: cyd's video of ana back after {down:.2f} s, ana's of cyd {up:.2f} s"
        )
        assert down <= GAP_S and up <= GAP_S, (down, up)

        after = await cyd.state()
        # Restarted in place: no new session, no start-over.
        assert after["iceRestarts"] > before["iceRestarts"], after
        assert after["sfuResets"] == before["sfuResets"], after
        assert after["sfuRestarts"] == before["sfuRestarts"], after
        await eventually(
            lambda: in_sfu(cyd), message="cyd connected", timeout=EVENTUALLY_S, interval=POLL_S
        )
        for pc in ("publish", "subscribe"):
            await eventually(
                lambda pc=pc: _restarts_counted(server, pc),
                message=f"the server counted a {pc} ICE restart",
                timeout=EVENTUALLY_S,
                interval=POLL_S,
            )
        # Bob, who did not move, still gets and is got by Cyd.
        await eventually(
            lambda: _decoding(cyd, bob_id), message="cyd decoding bob", timeout=EVENTUALLY_S
        )
        errors = [f"{p.name}: {e}" for p in group.values() for e in p.unexpected_console_errors()]
        assert not errors, "console errors:\n" + "\n".join(errors)
    finally:
        for participant in group.values():
            with contextlib.suppress(Exception):
                await participant.context.close()


def _restarts_counted(server: Server, pc: str) -> bool:
    metrics = server.request("GET", "/metrics")[1]
    counted = [
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("video_call_sfu_ice_restarts_total{")
        and f'pc="{pc}"' in line
        and 'outcome="ok"' in line
    ]
    return sum(counted) >= 1


def s_name(group: dict[str, Participant], user_id: str) -> str:
    return group[user_id].name


async def _decoding(viewer: Participant, source_id: str) -> bool:
    frames = (await video_of(viewer, source_id))[0]
    await asyncio.sleep(0.5)  # a window to see frames advance
    return (await video_of(viewer, source_id))[0] > frames
