"""Keyframe requests: rate-limited by deferring and coalescing, never dropped.

The keyframe gate of each subscriber (packet level) is tested in test_forwarding.py.
"""

from __future__ import annotations

import asyncio
import time

from media.keyframes import KeyframeRequester
from tests.support.polling import eventually


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
