"""media.fastsend: sender reports from its own counters (rewriting: test_forwarding.py)."""

from __future__ import annotations

import asyncio
from typing import Any

from aiortc.clock import current_ntp_time

from media.fastsend import ntp_now
from tests.support.polling import eventually

from .conftest import Call


def test_ntp_now_matches_aiortc() -> None:
    assert abs(ntp_now() - current_ntp_time()) < (1 << 32) // 100  # within 10 ms


def _video_receiver(call: Call, name: str) -> Any:
    """The receiver of the video ``name``'s client gets from the SFU."""
    return next(
        t.receiver
        for t in call.clients[name].subscribe_pc.getTransceivers()
        if t.kind == "video" and t.receiver.track is not None
    )


async def test_sender_reports_carry_the_forwarded_counts(call: Call) -> None:
    """Our own _run_rtcp: subscribers get SRs whose counts match what was sent."""
    for name in ("ana", "ben"):
        await call.join(name)
    slot = next(s for s in call.room.participants["ben"]._slots if s.kind == "video")
    receiver = _video_receiver(call, "ben")

    async def reported_over_50() -> int:
        """The packet count of the last sender report received, once over 50 (else 0)."""
        stats = await receiver.getStats()
        remote = [s for s in stats.values() if s.type == "remote-outbound-rtp"]
        count = remote[0].packetsSent if remote else 0
        return int(count) if count > 50 else 0

    # Reports come every 0.5-1.5 s.
    count = await eventually(reported_over_50, timeout=10, message="a report of > 50 packets")
    # A report counts what was sent up to it.
    assert 50 < count <= slot.fast.packets_sent
    sender_stats = await slot.transceiver.sender.getStats()
    outbound = [s for s in sender_stats.values() if s.type == "outbound-rtp"]
    assert outbound and 0 < outbound[0].packetsSent <= slot.fast.packets_sent


def test_retransmissions_to_a_subscriber_get_what_media_leaves_of_its_estimate() -> None:
    from media.fastsend import ResendBudget

    now = [0.0]
    estimate: list[float | None] = [200_000.0]
    media = [0.0]  # nothing sent yet: 25 kB/s for repairs, a 2.5 kB bucket
    budget = ResendBudget(lambda: estimate[0], lambda: media[0], clock=lambda: now[0])
    assert budget.allow(1200) and budget.allow(1200)
    assert not budget.allow(1200)  # a NACK storm's burst stops at the bucket
    assert budget.refused == 1
    now[0] += 0.048  # 1.2 kB of refill
    assert budget.allow(1200) and not budget.allow(1200)
    now[0] += 10.0  # idle: the bucket holds 0.1 s of the rate (at least two packets)
    sent = 0
    while budget.allow(1200):
        sent += 1
    assert sent == 2

    # Media takes 150 kbit/s of the 200: repairs get the other 50 (6.25 kB/s).
    media[0] = 150_000.0
    now[0] += 10.0
    while budget.allow(1200):
        pass
    sent, start = 0, now[0]
    while now[0] - start < 1.0:
        now[0] += 0.01
        sent += budget.allow(1200) * 1200
    assert 5_000 <= sent <= 6_250 + 2_400

    # Media at the whole estimate: repairs still get MIN_SHARE of it (20 kbit/s).
    media[0] = 200_000.0
    sent, start = 0, now[0]
    while now[0] - start < 1.0:
        now[0] += 0.01
        sent += budget.allow(1200) * 1200
    assert 2_000 <= sent <= 2_500 + 2_400

    estimate[0] = None  # no estimate yet: repairs are not held back
    assert all(budget.allow(1200) for _ in range(100))


async def test_a_sender_started_before_transport_cc_was_laid_out_numbers_once_relaid(
    call: Call,
) -> None:
    """Two subscribe answers close together: aiortc's connect, still running from the
    first, can start a sender added by the second with the extensions the answer
    left, before the SFU adds transport-cc (add_header_extension). That stream would
    go unnumbered for good, its traffic invisible to the send-side estimate and to
    probes. relayout() after each answer numbers it, the stream going on unbroken."""
    from aiortc.rtcrtpparameters import RTCRtpParameters
    from aiortc.rtp import HeaderExtensionsMap

    from media.aiortc_compat import add_header_extension
    from media.rtpheader import URI_TRANSPORT_CC
    from media.transportcc import EXT_ID

    for name in ("ana", "ben"):
        await call.join(name)
    ben = call.room.participants["ben"]
    slot = next(s for s in ben._slots if s.kind == "video")
    fast, sender = slot.fast, slot.transceiver.sender
    await eventually(lambda: fast.packets_sent > 20, timeout=10, message="video to ben")
    assert fast.layout is not None and fast.layout.twcc_at >= 0
    log = ben._transport.log

    async def window(seconds: float) -> tuple[int, int]:
        """(packets numbered on the connection, packets its streams sent) over ``seconds``."""
        numbered, sent = log.packets, sum(s.fast.packets_sent for s in ben._slots)
        await asyncio.sleep(seconds)  # a measuring window, not a wait for a state
        return log.packets - numbered, sum(s.fast.packets_sent for s in ben._slots) - sent

    # The race's outcome: the sender's map as aiortc configured it from the answer.
    stale = HeaderExtensionsMap()
    stale.configure(
        RTCRtpParameters(
            headerExtensions=[
                e for e in slot.transceiver._headerExtensions if e.uri != URI_TRANSPORT_CC
            ]
        )
    )
    setattr(sender, "_RTCRtpSender__rtp_header_extensions_map", stale)  # noqa: B010
    before = fast.sequence_number
    assert fast.relayout()
    assert fast.layout.twcc_at == -1 and fast.sequence_number == before
    numbered, sent = await window(1.0)
    assert numbered < sent  # the video went unnumbered

    add_header_extension(slot.transceiver, EXT_ID, URI_TRANSPORT_CC)
    before = fast.sequence_number
    assert fast.relayout()
    assert fast.layout.twcc_at >= 0 and fast.sequence_number == before
    assert not fast.relayout()  # idempotent: nothing changed since
    numbered, sent = await window(1.0)
    assert sent > 20 and numbered >= sent  # everything numbered again (and padding, if any)

    # Ben still decodes Ana's video across both changes of layout.
    receiver = _video_receiver(call, "ben")
    stats = [s for s in (await receiver.getStats()).values() if s.type == "inbound-rtp"]
    assert stats and stats[0].packetsLost == 0
