"""media.fastsend: sender reports from its own counters (rewriting: test_forwarding.py)."""

from __future__ import annotations

import asyncio

from aiortc.clock import current_ntp_time

from media.fastsend import ntp_now

from .conftest import Call


def test_ntp_now_matches_aiortc() -> None:
    assert abs(ntp_now() - current_ntp_time()) < (1 << 32) // 100  # within 10 ms


async def test_sender_reports_carry_the_forwarded_counts(call: Call) -> None:
    """Our own _run_rtcp: subscribers get SRs whose counts match what was sent."""
    for name in ("ana", "ben"):
        await call.join(name)
    slot = next(s for s in call.room.participants["ben"]._slots if s.kind == "video")
    receiver = next(
        t.receiver
        for t in call.clients["ben"].subscribe_pc.getTransceivers()
        if t.kind == "video" and t.receiver.track is not None
    )

    async def reported() -> int:
        stats = await receiver.getStats()
        remote = [s for s in stats.values() if s.type == "remote-outbound-rtp"]
        return remote[0].packetsSent if remote else 0

    for _ in range(100):  # reports come every 0.5-1.5 s
        count = await reported()
        if count > 50:
            break
        await asyncio.sleep(0.1)
    # A report counts what was sent up to it.
    assert 50 < count <= slot.fast.packets_sent
    sender_stats = await slot.transceiver.sender.getStats()
    outbound = [s for s in sender_stats.values() if s.type == "outbound-rtp"]
    assert outbound and 0 < outbound[0].packetsSent <= slot.fast.packets_sent
