"""A receiver on a weak downlink (issue 13's "done when", real Chromium, shaped with tc).

Three participants in an SFU call publish simulcast. Ana and Bob run in a
Chromium on this machine; Cyd runs in a Chromium inside a network namespace
of the test's own, linked to the server by a veth pair whose egress on the
server's side is Cyd's downlink (tests/browser/netlink.py). The server
listens on the pair's address; everyone uses it (for Ana and Bob it is a
local address, so only Cyd's traffic is shaped).

- no limit: everyone receives everyone at the top layer;
- Cyd's downlink at 400 kbit/s: Cyd receives a low layer (frameHeight <= 360)
  with no long freeze once switched, while Ana and Bob keep receiving each
  other at the top layer;
- the limit lifted: Cyd is back on the top layer;
- at 100 kbit/s Cyd's video is paused while its audio keeps flowing, and it
  resumes once the limit is lifted (probes copy what a paused track sent last).
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
from tests.browser.test_simulcast import LARGE, everyone_at_the_top_layer, in_sfu
from tests.support.polling import eventually

pytestmark = [pytest.mark.browser, pytest.mark.slow]

# The server on the pair's address, and a Chromium on each side of it.
link, server, browsers = farlink.link, farlink.server, farlink.browsers

#: Back on the top layer within 15 s of the limit lifted, and no freeze over 1 s
#: once switched down (the issue's bounds). Measured on 2026-12-02
#: (docs/benchmarks.md): the worst track of 8 runs 0.23-0.65 s in seven, 1.45 s
#: in one, since the SFU no longer forwards publishers' RTX probe padding and
#: counts a link's IP and UDP headers (freezes of 2-4 s in most runs before).
MAX_FREEZE_S = 1.0
RECOVERY_S = 15.0
#: Video paused at 100 kbit/s resumes within this long of the limit lifted.
RESUME_S = 20.0


async def longest_freeze(viewer: Participant, source_id: str, seconds: float) -> float:
    """The longest time without a new decoded frame over ``seconds`` (sampled)."""
    last_frames, last_change = (await video_of(viewer, source_id))[0], time.monotonic()
    longest = 0.0
    end = last_change + seconds
    while time.monotonic() < end:
        await asyncio.sleep(0.2)  # a sampling period, not a wait for a state
        frames = (await video_of(viewer, source_id))[0]
        now = time.monotonic()
        if frames > last_frames:
            longest = max(longest, now - last_change)
            last_frames, last_change = frames, now
    return max(longest, time.monotonic() - last_change)


#: What a subscriber's Chromium says of each video stream it receives from the SFU,
#: by publisher: what a freeze came with (losses, NACKs, PLIs, keyframes decoded).
RECEIVE_REPORT = """async () => {
  const out = {};
  const session = window.huddle.session;
  for (const { pc, role } of session.connections()) {
    if (role !== 'subscribe') continue;
    (await pc.getStats()).forEach((s) => {
      if (s.type !== 'inbound-rtp' || s.kind !== 'video') return;
      const who = session.sfu ? session.sfu.participantForMid(s.mid) : null;
      out[who || s.mid] = {
        frames: s.framesDecoded, keyframes: s.keyFramesDecoded, lost: s.packetsLost,
        nacks: s.nackCount, plis: s.pliCount, freezes: s.freezeCount,
        frozen_s: s.totalFreezesDuration, height: s.frameHeight,
      };
    });
  }
  return out;
}"""


async def receive_report(viewer: Participant) -> dict[str, dict[str, float]]:
    """Per publisher, the counters of :data:`RECEIVE_REPORT` at ``viewer``."""
    report: dict[str, dict[str, float]] = await viewer.page.evaluate(RECEIVE_REPORT)
    return report


def report_change(
    before: dict[str, dict[str, float]], after: dict[str, dict[str, float]], source_id: str
) -> str:
    """What changed of one publisher's counters between two reports, for the test's output."""
    old, new = before.get(source_id, {}), after.get(source_id, {})
    return ", ".join(
        f"{key} +{(new[key] or 0) - (old.get(key) or 0):g}"
        if key != "height"
        else f"height {new[key]}"
        for key in new
    )


async def at_least(viewer: Participant, source_id: str, height: int) -> int | None:
    frames, got = await video_of(viewer, source_id)
    return got if frames and got >= height else None


async def at_most(viewer: Participant, source_id: str, height: int) -> int | None:
    frames, got = await video_of(viewer, source_id)
    return got if frames and 0 < got <= height else None


@pytest.mark.timeout(420)
async def test_a_weak_downlink_gets_a_low_layer_without_freezing_the_others(
    browsers: tuple[Any, Any], server: Server, link: netlink.Link
) -> None:
    near, far = browsers
    users = [await make_user(server, name) for name in ("ana", "bob", "cyd")]
    ana_id, bob_id, cyd_id = (u.user_id for u in users)
    call_id = await make_call(server, users[0], *users[1:])
    group: dict[str, Participant] = {}
    for user, browser in zip(users, (near, near, far), strict=True):
        group[user.user_id] = await new_participant(
            browser, server.base_url, user.name, viewport=LARGE
        )
    ana, bob, cyd = (group[i] for i in (ana_id, bob_id, cyd_id))
    ana.expect_console("status of 409")  # the caller is joined from initiation…
    ana.expect_console("status of 404")  # …and asks for TURN servers: none configured
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
        await everyone_at_the_top_layer(group)

        # 400 kbit/s to Cyd: a low layer of each publisher, and no freeze once there.
        link.limit(400)
        for source in (ana_id, bob_id):
            await eventually(
                lambda s=source: at_most(cyd, s, 360),
                message=f"cyd receiving {group[source].name} at frameHeight <= 360",
                timeout=EVENTUALLY_S,
                interval=POLL_S,
            )
        for source in (ana_id, bob_id):
            before = await receive_report(cyd)
            freeze = await longest_freeze(cyd, source, 4.0)
            change = report_change(before, await receive_report(cyd), source)
            print(f"cyd's video of {group[source].name}: longest freeze {freeze:.2f} s ({change})")
            assert freeze <= MAX_FREEZE_S, (
                f"cyd's video of {group[source].name} froze {freeze:.1f} s"
            )
        # ... while Ana and Bob still get each other at the top layer.
        await everyone_at_the_top_layer({ana_id: ana, bob_id: bob})

        # Lifted: Cyd back on the top layer (probes prove the bandwidth first).
        link.lift()
        for source in (ana_id, bob_id):
            await eventually(
                lambda s=source: at_least(cyd, s, 540),
                message=f"cyd receiving {group[source].name} at frameHeight >= 540 again",
                timeout=RECOVERY_S,
                interval=POLL_S,
            )

        # 100 kbit/s: Cyd's video paused, its audio still flowing; then resumed.
        link.limit(100)

        async def video_stopped() -> bool:
            before = [(await video_of(cyd, s))[0] for s in (ana_id, bob_id)]
            await asyncio.sleep(2.0)  # a window to see frames not advance
            after = [(await video_of(cyd, s))[0] for s in (ana_id, bob_id)]
            return before == after

        await eventually(
            video_stopped, message="cyd's video paused", timeout=EVENTUALLY_S, interval=POLL_S
        )
        audio = await cyd.audio_packets_from(ana_id)
        await eventually(
            lambda: _more(cyd.audio_packets_from(ana_id), audio),
            message="cyd's audio of ana still flowing",
            timeout=EVENTUALLY_S,
            interval=POLL_S,
        )
        # Lifted again: probes find the bandwidth and the video resumes.
        link.lift()
        for source in (ana_id, bob_id):
            frames = (await video_of(cyd, source))[0]
            await eventually(
                lambda s=source, f=frames: _frames_beyond(cyd, s, f),
                message=f"cyd's video of {group[source].name} resumed",
                timeout=RESUME_S,
                interval=POLL_S,
            )
        errors = [f"{p.name}: {e}" for p in group.values() for e in p.unexpected_console_errors()]
        assert not errors, "console errors:\n" + "\n".join(errors)
    finally:
        link.lift()
        for participant in group.values():
            with contextlib.suppress(Exception):
                await participant.context.close()


async def _frames_beyond(viewer: Participant, source_id: str, frames: int) -> bool:
    return (await video_of(viewer, source_id))[0] > frames + 30


async def _more(count: Any, than: int) -> bool:
    return bool(await count > than + 20)
