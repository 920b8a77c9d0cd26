"""5% packet loss towards one subscriber: it recovers, the others don't notice."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable

from media.metrics import CountingMediaMetrics
from media.peers import SfuClient, TrackStats

from .conftest import Call, eventually

LOSS = 0.05


def video_from(client: SfuClient, other: str) -> TrackStats:
    stats = client.received_from(other, "video")
    assert stats is not None
    return stats


async def test_lossy_subscriber_recovers_and_others_are_unaffected(call: Call) -> None:
    for name in ("ana", "ben", "lossy"):
        await call.join(name)
    lossy = call.clients["lossy"]

    def flowing() -> bool:
        for name, client in call.clients.items():
            for other in call.clients:
                if other != name:
                    stats = client.received_from(other, "video")
                    if stats is None or stats.frames < 10:
                        return False
        return True

    await eventually(flowing, what="media everywhere before loss")

    # Drop 5% of what the server sends to "lossy" (RTP, RTX and RTCP alike).
    participant = call.room.participants["lossy"]
    transport = participant._subscribe_pc.getTransceivers()[0].sender.transport
    original: Callable[[bytes], Awaitable[None]] = transport._send_rtp
    rng = random.Random(1234)
    dropped = 0

    async def lossy_send(data: bytes) -> None:
        nonlocal dropped
        if rng.random() < LOSS:
            dropped += 1
            return
        await original(data)

    transport._send_rtp = lossy_send  # type: ignore[method-assign]

    before = {
        (name, other): video_from(call.clients[name], other).frames
        for name in call.clients
        for other in call.clients
        if other != name
    }
    for stats in lossy.stats:
        stats.max_gap = 0.0
    clean_stats = video_from(call.clients["ana"], "ben")
    clean_stats.max_gap = 0.0
    await asyncio.sleep(0)
    window_start = clean_stats.frames
    await eventually(lambda: clean_stats.frames >= window_start + 120, timeout=60, what="4 s")

    got = {
        key: video_from(call.clients[key[0]], key[1]).frames - count
        for key, count in before.items()
    }
    clean = got[("ana", "ben")]
    assert dropped > 0
    for other in ("ana", "ben"):
        assert got[("lossy", other)] >= 0.85 * clean, (got, dropped, call.metrics.counts)
        assert video_from(lossy, other).max_gap < 1.0, video_from(lossy, other)
    # Repair happened: NACKs answered with RTX (see media.passthrough._route_rtx).
    metrics = call.metrics
    assert isinstance(metrics, CountingMediaMetrics)
    assert metrics.counts["nack_received"] > 0, metrics.counts
    # The others keep a smooth stream.
    for name, other in (("ana", "ben"), ("ben", "ana"), ("ana", "lossy"), ("ben", "lossy")):
        assert got[(name, other)] >= 0.9 * clean, got
        assert video_from(call.clients[name], other).max_gap < 0.5
