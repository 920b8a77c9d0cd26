"""Send-side probing in the adaptation: probes climb while the estimate does not cover
what the subscriber would take, but never right after the link showed its limit."""

from __future__ import annotations

from media.adaptation import PROBE_CAREFUL, PROBE_QUIET, SubscriberAdaptation
from media.allocator import Demand
from media.feedback import SubscriberFeedback
from media.metrics import CountingMediaMetrics
from media.pacing import CAREFUL_FACTOR, FACTOR, Pacing
from media.probe import Prober
from media.transportcc import TransportCc
from tests.support.clock import ManualClock

CAMERA = Demand(
    key="v",
    kind="video",
    layers=((0, 150_000.0), (1, 500_000.0), (2, 1_500_000.0)),
    current=0,
)


def rig(pacing: Pacing | None = None) -> tuple[SubscriberAdaptation, Prober, ManualClock]:
    clock = ManualClock(100.0)
    metrics = CountingMediaMetrics()
    transport = TransportCc("t", accelerated=False, metrics=metrics, clock=clock)
    transport.negotiated = True
    prober = Prober("p", transport, lambda nbytes: nbytes, metrics=metrics)

    async def send(message: dict[str, object]) -> None:
        pass

    adaptation = SubscriberAdaptation(
        "s",
        SubscriberFeedback("s", lambda ssrc: None, metrics=metrics),
        lambda: [],
        send,
        metrics=metrics,
        transport=transport,
        prober=prober,
        clock=clock,
        pacing=pacing,
    )
    return adaptation, prober, clock


async def test_a_capped_subscriber_is_probed_for_more() -> None:
    adaptation, prober, clock = rig()
    adaptation._probe_for(300_000.0, 200_000.0, [CAMERA], clock())
    assert prober.busy
    await prober.close()


async def test_no_second_probe_before_the_first_ones_outcome() -> None:
    adaptation, prober, clock = rig()
    adaptation._probe_for(300_000.0, 200_000.0, [CAMERA], clock())
    assert prober.busy
    await prober.close()  # the cluster is over; its feedback is not in yet
    clock.advance(1.0)
    adaptation._probe_for(300_000.0, 200_000.0, [CAMERA], clock())
    assert not prober.busy
    adaptation._probed(310_000.0, 700_000.0)  # it fell short: wait longer
    clock.advance(0.5)
    adaptation._probe_for(300_000.0, 200_000.0, [CAMERA], clock())
    assert not prober.busy


async def test_no_probe_right_after_the_estimate_dropped() -> None:
    adaptation, prober, clock = rig()
    adaptation._dropped()  # what TransportCc.on_drop calls
    for _ in range(int(PROBE_QUIET / 0.5)):
        adaptation._probe_for(300_000.0, 200_000.0, [CAMERA], clock())
        assert not prober.busy
        clock.advance(0.5)
    clock.advance(0.1)
    adaptation._probe_for(300_000.0, 200_000.0, [CAMERA], clock())
    assert prober.busy
    await prober.close()


async def test_the_pace_is_the_estimate_itself_for_a_while_after_it_dropped() -> None:
    pacing = Pacing("p")
    try:
        adaptation, prober, clock = rig(pacing)
        adaptation._send_side = True  # the estimate is transport-wide feedback's
        adaptation._pace(400_000.0, clock())
        assert pacing.pacer.rate == FACTOR * 400_000.0
        adaptation._dropped()  # the link showed its limit: what it carries is the estimate
        adaptation._pace(300_000.0, clock())
        assert pacing.pacer.rate == CAREFUL_FACTOR * 300_000.0 < FACTOR * 300_000.0
        clock.advance(PROBE_CAREFUL + 0.1)
        adaptation._pace(300_000.0, clock())
        assert pacing.pacer.rate == FACTOR * 300_000.0
        adaptation._send_side = False  # REMB only: not paced
        adaptation._pace(300_000.0, clock())
        assert pacing.pacer.rate == 0.0
        await prober.close()
    finally:
        await pacing.close()


async def test_the_pace_follows_the_estimate_when_there_is_nothing_to_allocate() -> None:
    # No simulcast and no tile settings: every tick after the first has nothing to
    # allocate, but a pacer left at the first estimate would queue what the climbing
    # estimate lets through, and the repairs behind it would come too late.
    pacing = Pacing("p")
    try:
        adaptation, prober, clock = rig(pacing)
        transport = adaptation._transport
        assert transport is not None
        aimd = transport.estimator.aimd
        aimd.set(400_000.0)
        transport.feedback_at = clock()  # as transport-wide feedback does
        await adaptation.tick()
        assert pacing.pacer.rate == FACTOR * 400_000.0
        for rate in (600_000.0, 900_000.0):
            aimd.set(rate)
            clock.advance(0.5)
            transport.feedback_at = clock()
            await adaptation.tick()
            assert adaptation.estimate == rate
            assert pacing.pacer.rate == FACTOR * rate
        await prober.close()
    finally:
        await pacing.close()
