"""Keyframe requests: rate-limited by deferring and coalescing, never dropped.

The keyframe gate of each subscriber (packet level) is tested in test_forwarding.py.
"""

from __future__ import annotations

import pytest

from media import keyframes
from media.keyframes import KeyframeRequester
from tests.support.clock import ManualClock
from tests.support.polling import eventually


async def test_burst_is_coalesced_into_one_deferred_pli() -> None:
    clock = ManualClock()
    sent: list[float] = []

    async def send_pli() -> bool:
        sent.append(clock.now)
        return True

    requester = KeyframeRequester(send_pli, min_interval=0.3, clock=clock, sleep=clock.sleep)
    try:
        requester.request()
        await eventually(lambda: len(sent) == 1, timeout=5)
        clock.advance(0.1)
        for _ in range(5):  # a burst of joiners inside the window
            requester.request()
        # One PLI is deferred to the end of the window, and nothing else goes out.
        await eventually(lambda: len(clock.pending()) == 1, timeout=5)
        assert clock.pending()[0].seconds == pytest.approx(0.2)
        assert len(sent) == 1 and requester.pending
        assert requester.coalesced == 4
        clock.advance(0.2)
        await eventually(lambda: len(sent) == 2, timeout=5)
        assert sent[1] - sent[0] == pytest.approx(0.3)  # the rate limit held
        assert sent[1] > 0.1  # after the burst: the deferred PLI covers every request
        assert not requester.pending
    finally:
        await requester.close()


async def test_pli_before_media_is_not_counted_and_retried_until_media_arrives() -> None:
    # The publisher's first keyframe may never reach the SFU (aiortc encodes
    # before its connection is up): a request made before any media is
    # retried until the PLI can be addressed, not dropped.
    calls = 0

    async def send_pli() -> bool:
        nonlocal calls
        calls += 1
        return calls >= 3  # no SSRC known for the first two attempts

    requester = KeyframeRequester(send_pli, min_interval=10.0)
    try:
        requester.request()
        await eventually(lambda: calls == 1, timeout=5)
        assert requester.sent == 0
        requester.request()  # while it retries: coalesced into the retry
        await eventually(lambda: requester.sent == 1 and not requester.pending, timeout=5)
        assert calls == 3
        assert requester.coalesced == 1
    finally:
        await requester.close()


async def test_pli_without_media_gives_up_after_a_bounded_number_of_attempts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(keyframes, "NO_MEDIA_RETRY", 0.01)
    calls = 0

    async def send_pli() -> bool:
        nonlocal calls
        calls += 1
        return False  # a track that never sends

    requester = KeyframeRequester(send_pli, min_interval=10.0)
    try:
        requester.request()
        await eventually(lambda: not requester.pending, timeout=5)
        assert calls == keyframes.NO_MEDIA_RETRIES
        assert requester.sent == 0
        requester.request()  # not rate-limited: nothing was actually sent
        await eventually(lambda: calls > keyframes.NO_MEDIA_RETRIES, timeout=5)
    finally:
        await requester.close()
