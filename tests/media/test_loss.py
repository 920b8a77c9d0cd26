"""5% packet loss on a subscriber's downlink, or on a publisher's uplink: both recover.

Loss is injected where the network would lose packets, on the receiving end
of a connection (its ICE connection's incoming datagrams), so the server's
production send path (in-place SRTP, GSO, the C loop) is what is tested.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import Any

from aiortc import RTCPeerConnection

from media.aiortc_compat import ice_protocols
from media.loadtest.sfuclient import SfuClient, TrackStats
from media.metrics import CountingMediaMetrics
from tests.support.polling import eventually

from .conftest import Call

LOSS = 0.05


def video_from(client: SfuClient, other: str) -> TrackStats:
    stats = client.received_from(other, "video")
    assert stats is not None
    return stats


def lose_incoming(pc: RTCPeerConnection, seed: int) -> Callable[[], int]:
    """Drop ~5% of the SRTP/SRTCP datagrams ``pc``'s sockets receive; returns a drop counter."""
    protocols = ice_protocols(pc)
    assert protocols
    rng = random.Random(seed)
    dropped = 0

    def wrap(deliver: Callable[[Any, Any], None]) -> Callable[[Any, Any], None]:
        def lossy(data: Any, addr: Any) -> None:
            nonlocal dropped
            if data and 127 < data[0] < 192 and rng.random() < LOSS:
                dropped += 1
                return
            deliver(data, addr)

        return lossy

    for protocol in protocols:
        protocol.datagram_received = wrap(protocol.datagram_received)  # type: ignore[method-assign]
    return lambda: dropped


async def media_everywhere(call: Call) -> None:
    def flowing() -> bool:
        for name, client in call.clients.items():
            for other in call.clients:
                if other != name:
                    stats = client.received_from(other, "video")
                    if stats is None or stats.frames < 10:
                        return False
        return True

    await eventually(flowing, message="media everywhere before loss")


def frame_counts(call: Call) -> dict[tuple[str, str], int]:
    return {
        (name, other): video_from(call.clients[name], other).frames
        for name in call.clients
        for other in call.clients
        if other != name
    }


async def four_seconds(call: Call) -> dict[tuple[str, str], int]:
    """Frames each subscriber got of each publisher over ~4 s of a clean stream."""
    before = frame_counts(call)
    for client in call.clients.values():
        for stats in client.stats:
            stats.max_gap = 0.0
    clock = video_from(call.clients["ana"], "ben")
    start = clock.frames
    await eventually(lambda: clock.frames >= start + 120, timeout=60, message="4 s")
    return {key: count - before[key] for key, count in frame_counts(call).items()}


async def test_lossy_subscriber_recovers_and_others_are_unaffected(call: Call) -> None:
    for name in ("ana", "ben", "lossy"):
        await call.join(name)
    lossy = call.clients["lossy"]
    await media_everywhere(call)
    dropped = lose_incoming(lossy.subscribe_pc, 1234)
    await asyncio.sleep(0)
    got = await four_seconds(call)
    clean = got[("ana", "ben")]
    assert dropped() > 0
    for other in ("ana", "ben"):
        assert got[("lossy", other)] >= 0.85 * clean, (got, dropped(), call.metrics.counts)
        assert video_from(lossy, other).max_gap < 1.0, video_from(lossy, other)
    # Repair happened on the production path: NACKs answered from the packet cache.
    metrics = call.metrics
    assert isinstance(metrics, CountingMediaMetrics)
    assert metrics.counts["nack_received"] > 0, metrics.counts
    assert metrics.counts["retransmitted"] > 0, metrics.counts
    slots = call.room.participants["lossy"]._slots
    assert all(slot.fast.out is not None for slot in slots)  # in-place SRTP + GSO output
    # The others keep a smooth stream.
    for name, other in (("ana", "ben"), ("ben", "ana"), ("ana", "lossy"), ("ben", "lossy")):
        assert got[(name, other)] >= 0.9 * clean, got
        assert video_from(call.clients[name], other).max_gap < 0.5


async def test_loss_on_a_publishers_uplink_is_repaired_by_nacks(call: Call) -> None:
    for name in ("ana", "ben", "cy"):
        await call.join(name)
    await media_everywhere(call)
    cy = call.room.participants["cy"]
    dropped = lose_incoming(cy._publish_pc, 99)  # what reaches the server from cy
    got = await four_seconds(call)
    clean = got[("ana", "ben")]
    assert dropped() > 0
    metrics = call.metrics
    assert isinstance(metrics, CountingMediaMetrics)
    assert metrics.counts["nack_sent"] > 0, metrics.counts  # the SFU asked cy to resend
    assert cy._inbound.rtx_packets > 0  # and cy's retransmissions came back as RTX
    for name in ("ana", "ben"):
        assert got[(name, "cy")] >= 0.85 * clean, (got, dropped(), metrics.counts)
        assert video_from(call.clients[name], "cy").max_gap < 1.0
