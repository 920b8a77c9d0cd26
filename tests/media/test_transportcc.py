"""Transport-cc towards subscribers (media/transportcc.py): the SDP, feedback, probe clusters.

Feedback is built by the SFU's own publisher-side recorder (media/twcc.py), which
tests/media/test_inbound.py checks against an independent reader.
"""

from __future__ import annotations

from typing import Any

from aiortc import RTCPeerConnection
from aiortc.mediastreams import AudioStreamTrack, VideoStreamTrack

from media.gcc import START, PacketResult
from media.metrics import CountingMediaMetrics
from media.rtpheader import URI_TRANSPORT_CC
from media.transportcc import (
    EXT_ID,
    OUTAGE_REPORTS_S,
    TransportCc,
    answered_transport_cc,
    cluster_rates,
    offer_transport_cc,
)
from media.twcc import TwccRecorder


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def _offer() -> str:
    pc = RTCPeerConnection()
    pc.addTransceiver(AudioStreamTrack(), direction="sendonly")
    pc.addTransceiver(VideoStreamTrack(), direction="sendonly")
    offer = await pc.createOffer()
    await pc.close()
    return str(offer.sdp)


async def test_the_offer_carries_the_extension_and_feedback_in_every_media_section() -> None:
    sdp = offer_transport_cc(await _offer())
    sections = sdp.split("\r\nm=")[1:]
    assert len(sections) == 2
    for section in sections:
        assert section.count(f"a=extmap:{EXT_ID} {URI_TRANSPORT_CC}") == 1
        codecs = [
            line.split()[0].split(":")[1]
            for line in section.split("\r\n")
            if line.startswith("a=rtpmap:") and "rtx/" not in line
        ]
        for pt in codecs:
            assert f"a=rtcp-fb:{pt} transport-cc" in section
    assert "rtcp-fb:98 transport-cc" not in sdp  # not on RTX
    assert offer_transport_cc(sdp).count(URI_TRANSPORT_CC) == 2  # idempotent


def test_the_answer_says_which_sections_took_it() -> None:
    answer = "\r\n".join(
        [
            "v=0",
            "m=audio 9 UDP/TLS/RTP/SAVPF 111",
            "a=mid:0",
            "a=extmap:1 urn:ietf:params:rtp-hdrext:sdes:mid",
            "m=video 9 UDP/TLS/RTP/SAVPF 96",
            "a=mid:1",
            f"a=extmap:{EXT_ID} {URI_TRANSPORT_CC}",
            "m=video 9 UDP/TLS/RTP/SAVPF 96",
            "a=mid:2",
            f"a=extmap:9 {URI_TRANSPORT_CC}",  # another id than offered: not taken
        ]
    )
    assert answered_transport_cc(answer) == {"1"}
    assert answered_transport_cc("garbage\r\nm=\r\na=mid:") == set()


def _feedback(results: list[tuple[int, int | None]]) -> bytes:
    recorder = TwccRecorder()
    for seq, arrival in results:
        if arrival is not None:
            recorder.record(seq, arrival)
    packet = recorder.feedback(1, 2)
    assert packet is not None
    return packet


def _transport() -> tuple[TransportCc, Clock, CountingMediaMetrics]:
    clock = Clock()
    metrics = CountingMediaMetrics()
    transport = TransportCc("t", accelerated=False, metrics=metrics, clock=clock)
    transport.negotiated = True
    return transport, clock, metrics


def _cluster(transport: TransportCc, target: float) -> list[int]:
    """A probe cluster of 30 packets of 1000 B sent 2.5 ms apart (3.2 Mbit/s): the
    PySendLog logs them all "now", and the cluster's rate comes from the send
    spread, so its entries are rewritten with one."""
    transport.begin_cluster(target)
    cluster = [transport.log.take(1000) for _ in range(30)]
    transport.end_cluster()
    ring = transport.log._ring  # type: ignore[attr-defined]
    base_us = ring[cluster[0]][1]
    for i, seq in enumerate(cluster):
        ring[seq] = (seq, base_us + i * 2_500, 1000)
    return cluster


def test_feedback_joined_with_the_log_makes_an_estimate_that_goes_stale() -> None:
    transport, clock, _ = _transport()
    assert transport.estimate is None
    arrivals = []
    for i in range(200):
        seq = transport.log.take(1200)
        arrivals.append((seq, 1_000_000 + i * 2_000))  # 1200 B every 2 ms: 4.8 Mbit/s
    transport.on_feedback(_feedback(arrivals))
    assert transport.feedbacks == 1
    estimate = transport.estimate
    assert estimate is not None and estimate > 1_000_000
    transport.on_feedback(_feedback(arrivals))  # the same report again: nothing new
    assert transport.feedbacks == 1 and transport.skipped == 1
    transport.on_feedback(b"\x8f\xcd\x00\x01garbage")
    assert transport.skipped == 2
    clock.now += 10
    assert transport.estimate is None  # no fresh feedback: no estimate


def test_a_cluster_that_arrives_at_its_rate_raises_the_estimate() -> None:
    transport, _, metrics = _transport()
    outcomes: list[Any] = []
    transport.on_probe = lambda rate, target: outcomes.append((rate, target))
    # Some slow media first: an estimate well under 1 Mbit/s.
    arrivals = [(transport.log.take(300), 1_000_000 + i * 10_000) for i in range(60)]
    transport.on_feedback(_feedback(arrivals))
    low = transport.estimator.estimate
    assert low is not None and low <= START
    cluster = _cluster(transport, 3_000_000)
    transport.on_feedback(
        _feedback([(seq, 2_000_000 + i * 2_500) for i, seq in enumerate(cluster)])
    )
    assert len(outcomes) == 1
    rate, target = outcomes[0]
    assert rate is not None and abs(rate - 3_200_000) < 200_000 and target == 3_000_000
    assert transport.estimator.estimate is not None and transport.estimator.estimate >= rate
    assert metrics.counts["padding_probes_raised"] == 1


def test_a_cluster_that_fell_short_raises_nothing() -> None:
    """It arrived at well under its target (a queue on the way): the link cannot take
    the target, and the rate it came at is no proof either (a shaper's burst)."""
    transport, _, metrics = _transport()
    outcomes: list[Any] = []
    transport.on_probe = lambda rate, target: outcomes.append((rate, target))
    arrivals = [(transport.log.take(300), 1_000_000 + i * 10_000) for i in range(60)]
    transport.on_feedback(_feedback(arrivals))
    before = transport.estimator.estimate
    cluster = _cluster(transport, 3_000_000)
    # Sent at 3.2 Mbit/s, arrived at about 1 Mbit/s (8 ms apart): above the estimate,
    # below the target.
    transport.on_feedback(
        _feedback([(seq, 2_000_000 + i * 8_000) for i, seq in enumerate(cluster)])
    )
    (outcome,) = outcomes
    assert outcome[0] is not None and before is not None and outcome[0] > before
    after = transport.estimator.estimate
    assert after is not None and abs(after - before) < 1_000 < outcome[0] - after
    assert metrics.counts["padding_probes_not_raised"] == 1


def test_a_cluster_that_queued_shows_the_rate_it_arrived_at() -> None:
    results = [PacketResult(i, i * 1_000, 1000, 5_000_000 + i * 4_000) for i in range(20)]
    rates = cluster_rates(results)
    assert rates is not None
    rate, sent_at = rates
    assert abs(sent_at - 8_000_000) < 1 and abs(rate - 0.95 * 2_000_000) < 1
    assert cluster_rates(results[:3]) is None  # too little arrived to say


def test_a_cluster_judged_on_what_was_counted_when_padding_was_not() -> None:
    # One packet in seven not reported (Chrome did not count it), the rest on time:
    # the link carried the whole cluster.
    results = [
        PacketResult(i, i * 1_000, 1000, None if i % 7 == 3 else 5_000_000 + i * 1_000)
        for i in range(21)
    ]
    rates = cluster_rates(results)
    assert rates is not None and abs(rates[0] - 8_000_000) < 1 and rates[0] == rates[1]


def test_a_cluster_mostly_dropped_shows_the_rate_the_rest_came_at() -> None:
    # A policer let one packet in four through, on time: 2 Mbit/s came of 8 sent.
    results = [
        PacketResult(i, i * 1_000, 1000, 5_000_000 + i * 1_000 if i % 4 == 0 else None)
        for i in range(41)
    ]
    rates = cluster_rates(results)
    assert rates is not None and abs(rates[0] - 0.95 * 2_000_000) < 1


def test_loss_reported_across_a_path_change_is_the_outage_not_congestion() -> None:
    transport, clock, _ = _transport()
    arrivals = []
    for i in range(200):
        seq = transport.log.take(1200)
        arrivals.append((seq, 1_000_000 + i * 2_000))
    transport.on_feedback(_feedback(arrivals))
    estimate = transport.estimator.estimate
    assert estimate is not None
    transport.path_changed()  # an ICE restart moved the connection
    clock.now += 1.0
    transport.on_loss_report(0.98)  # the report covering the outage
    assert transport.estimator.estimate == estimate
    clock.now += OUTAGE_REPORTS_S
    transport.on_loss_report(0.98)  # on the new path, loss is loss again
    after = transport.estimator.estimate
    assert after is not None and after < estimate
