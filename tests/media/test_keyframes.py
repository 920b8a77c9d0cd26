"""Keyframe requests: rate-limited by deferring and coalescing, never dropped."""

from __future__ import annotations

import asyncio
import time

from media.forwarder import DownTrack
from media.frames import EncodedFrame, time_base_for
from media.keyframes import KeyframeRequester
from media.metrics import NoopMediaMetrics

from .conftest import eventually

TB = time_base_for(90000)


async def test_burst_is_coalesced_into_one_deferred_pli() -> None:
    sent: list[float] = []

    async def send_pli() -> bool:
        sent.append(time.monotonic())
        return True

    requester = KeyframeRequester(send_pli, min_interval=0.3)
    try:
        requester.request()
        await eventually(lambda: len(sent) == 1, timeout=5)
        burst_end = 0.0
        for _ in range(5):  # a burst of joiners inside the window
            requester.request()
            burst_end = time.monotonic()
            await asyncio.sleep(0.02)
        assert len(sent) == 1
        await eventually(lambda: len(sent) == 2, timeout=5)
        assert sent[1] - sent[0] >= 0.3 - 0.01  # rate limit held
        assert sent[1] >= burst_end  # the deferred PLI covers every request
        assert requester.coalesced == 4
        assert not requester.pending
    finally:
        await requester.close()


async def test_pli_before_media_is_not_counted_and_retried() -> None:
    calls = 0

    async def send_pli() -> bool:
        nonlocal calls
        calls += 1
        return False  # no SSRC known yet

    requester = KeyframeRequester(send_pli, min_interval=10.0)
    requester.request()
    await eventually(lambda: calls == 1 and not requester.pending, timeout=5)
    requester.request()  # not rate-limited: nothing was actually sent
    await eventually(lambda: calls == 2, timeout=1)
    assert requester.sent == 0
    await requester.close()


class FakeUp:
    """Stands in for an UpTrack: a publisher answering PLIs with a keyframe."""

    def __init__(self, requester_interval: float) -> None:
        self.downs: list[DownTrack] = []
        self.plis = 0
        self.requester = KeyframeRequester(self._pli, requester_interval)
        self.pts = 0

    async def _pli(self) -> bool:
        self.plis += 1
        self.emit(True)
        return True

    def emit(self, keyframe: bool) -> None:
        self.pts += 3000
        for down in self.downs:
            down.push(EncodedFrame(b"\x00" if keyframe else b"\x01", self.pts, TB, keyframe))

    def add_down(self, down: DownTrack) -> None:
        self.downs.append(down)
        self.requester.request()

    def remove_down(self, down: DownTrack) -> None:
        self.downs.remove(down)

    def request_keyframe(self) -> None:
        self.requester.request()


async def test_burst_of_joiners_all_get_a_keyframe() -> None:
    up = FakeUp(requester_interval=0.3)
    downs = [DownTrack("video", 64, NoopMediaMetrics()) for _ in range(5)]
    try:
        up.add_down(downs[0])
        await eventually(lambda: up.plis == 1, timeout=5)
        for down in downs[1:]:  # join right after the first PLI
            down.attach(up)  # type: ignore[arg-type]
            up.emit(False)  # delta frames keep flowing; the gate holds them back
        await eventually(lambda: up.plis == 2, timeout=5)
        for down in downs:
            frame = await asyncio.wait_for(down.recv(), 5)
            assert frame.keyframe
        assert up.plis == 2  # five joiners, two PLIs
    finally:
        for down in downs:
            down.stop()
        await up.requester.close()


async def test_slow_subscriber_skips_to_next_keyframe() -> None:
    up = FakeUp(requester_interval=0.0)
    down = DownTrack("video", 4, NoopMediaMetrics())
    down.attach(up)  # type: ignore[arg-type]
    try:
        await eventually(lambda: up.plis >= 1, timeout=5)  # keyframe opens the gate
        for _ in range(10):
            up.emit(False)  # nobody reads: overflow
        assert down.skips == 1
        up.emit(True)
        frame = await asyncio.wait_for(down.recv(), 5)
        assert frame.keyframe  # no delta frame after the skip before a keyframe
        pts = frame.pts
        up.emit(False)
        nxt = await asyncio.wait_for(down.recv(), 5)
        assert nxt.pts > pts
    finally:
        down.stop()
        await up.requester.close()


async def test_down_track_rebases_pts_when_switching_source() -> None:
    a, b = FakeUp(0.0), FakeUp(0.0)
    b.pts = 10_000_000
    down = DownTrack("video", 16, NoopMediaMetrics())
    try:
        down.attach(a)  # type: ignore[arg-type]
        a.emit(True)
        first = await asyncio.wait_for(down.recv(), 5)
        down.attach(b)  # type: ignore[arg-type]
        b.emit(True)
        second = await asyncio.wait_for(down.recv(), 5)
        assert first.pts == 0
        assert 0 < second.pts - first.pts <= 3000
    finally:
        down.stop()
        await a.requester.close()
        await b.requester.close()
