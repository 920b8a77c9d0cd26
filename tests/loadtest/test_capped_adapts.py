"""A capped load-test subscriber makes a real server move it down, and back up once lifted.

A real ``huddle serve``; the load tester's own peers (``SignaledPeer``, as
``huddle loadtest`` runs them): one simulcast publisher (three VP8 layers up
to 640x360 at 1 Mbit/s), one uncapped watcher and one subscriber on aiortc's
receive path (NACK and PLI, as a browser) whose downlink goes through the
load tester's shaper (media/loadtest/netcap.py). The subscriber answers the
SFU's transport-cc and sends transport-wide feedback
(media/loadtest/ccfeedback.py), so the SFU's send-side estimate sees the
cap's queue and drops. What is asserted is what the load tester reports per
track: the picture size of each keyframe received (the layer, over time),
the SFU's ``quality`` messages, gaps between frames.
"""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from bench.simulcast.room import BenchRoom, video_from, wait_for
from media.aiortc_compat import restrict_host_addresses
from media.loadtest.api import HuddleApi
from media.loadtest.preencoded import opus_clip
from media.loadtest.sfuclient import TrackStats
from media.loadtest.simulcast import SimulcastClips, simulcast_clips

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

CAP = 400_000
FPS = 30


def size_now(stats: TrackStats | None) -> tuple[int, int] | None:
    return stats.size if stats is not None else None


async def test_a_capped_subscriber_goes_down_and_back_up_when_lifted(huddle_server: str) -> None:
    clips: SimulcastClips = await asyncio.to_thread(
        simulcast_clips, 640, 360, frames=10 * FPS, fps=FPS, bitrate=1_000_000,
        keyframe_every=10 * FPS,
    )  # fmt: skip
    top, lower = clips.top, set(clips.sizes[:-1])
    restrict_host_addresses(["127.0.0.1"])
    async with aiohttp.ClientSession() as session:
        room = BenchRoom(HuddleApi(huddle_server, session), session, ["pub", "watcher", "sub"])
        await room.create("capped")
        try:
            await room.join("pub", simulcast=clips, audio=opus_clip())
            source = room.user_id("pub")
            watcher = await room.join("watcher", count_only=True)
            sub = await room.join("sub", count_only=False, receive_cap_bps=CAP)
            cap = sub.media.receive_cap
            assert cap is not None
            cap.set_bitrate(None)  # installed, lifted until it is on the top layer

            await wait_for(lambda: size_now(video_from(sub, source)) == top, 30, "sub on top")
            await wait_for(lambda: size_now(video_from(watcher, source)) == top, 30, "watcher")
            feedback = sub.media.transport_feedback
            assert feedback is not None  # transport-cc answered...
            # ... and feedback sent (the first may come after the top layer on a busy machine).
            await wait_for(lambda: feedback.feedbacks_sent > 0, 10, "transport-wide feedback")
            video, watched = video_from(sub, source), video_from(watcher, source)
            assert video is not None and watched is not None
            watcher_sizes = len(watched.sizes)

            # The downlink drops to 400 kbit/s: within a few seconds a lower layer.
            capped_at = asyncio.get_running_loop().time()
            cap.set_bitrate(CAP)
            await wait_for(lambda: video.size in lower, 10, "a lower layer under the cap")
            down_s = asyncio.get_running_loop().time() - capped_at
            assert cap.dropped + cap.delayed > 0  # the shaper queued (then dropped)
            # It stays low while capped (a step up the SFU tries is taken back) and
            # keeps getting video: no gap of seconds after the switch.
            video.max_gap = 0.0
            await asyncio.sleep(6)
            await wait_for(lambda: video.size in lower, 10, "back on a lower layer")
            assert video.quality[-1][1] in clips.rids[:-1], video.quality
            assert not video.quality[-1][2], "paused under a cap the low layer fits"
            assert video.max_gap < 2.0, video.max_gap
            # The uncapped watcher never left the top layer.
            assert len(watched.sizes) == watcher_sizes and watched.size == top
            assert watched.long_freezes == 0

            # Lifted: back on the top layer.
            cap.set_bitrate(None)
            await wait_for(lambda: video.size == top, 20, "the top layer after the lift")
            await wait_for(lambda: video.quality[-1][1] == clips.rids[-1], 5, "quality: f")
            assert down_s < 10
        finally:
            await room.close()
