"""The send-side estimator (media/gcc.py) on synthetic feedback from a simulated link.

The link is a FIFO bottleneck: a packet leaves the queue ``size / capacity``
after the one before it (or when it arrives, if the queue is empty), plus a
fixed propagation delay; a packet that finds more than ``queue_ms`` of
backlog is dropped (a tail-drop router). The sender sends video-like bursts
(one frame every 33 ms, 1,200-byte packets). Feedback comes every 50 ms, a
receiver report with the fraction lost every second.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from media.gcc import FLOOR, START, PacketResult, SendSideEstimator, Usage

FRAME_US = 33_333
FEEDBACK_US = 50_000
PACKET = 1200


@dataclass
class Link:
    capacity: float  # bit/s
    propagation_us: int = 20_000
    queue_ms: float = 300.0
    free_at: float = 0.0  # when the bottleneck finishes the last packet (µs)
    seq: int = 0
    pending: list[PacketResult] = field(default_factory=list)
    sent: int = 0  # since the last receiver report
    dropped: int = 0

    def send(self, now_us: int, size: int) -> None:
        start = max(float(now_us), self.free_at)
        arrival: int | None
        self.sent += 1
        if start - now_us > self.queue_ms * 1000:
            arrival = None  # tail drop
            self.dropped += 1
        else:
            self.free_at = start + size * 8 / self.capacity * 1e6
            arrival = int(self.free_at) + self.propagation_us
        self.pending.append(PacketResult(self.seq, now_us, size, arrival))
        self.seq += 1

    def feedback(self, now_us: int) -> list[PacketResult]:
        """What arrived by ``now_us`` (and what was lost before it), in sequence order."""
        done = [r for r in self.pending if r.arrival_us is None or r.arrival_us + 0 <= now_us]
        last = max((r.seq for r in done), default=-1)
        out = [r for r in self.pending if r.seq <= last]
        self.pending = [r for r in self.pending if r.seq > last]
        return out

    def report(self) -> float:
        """The fraction lost since the last report (a receiver report's)."""
        fraction = self.dropped / self.sent if self.sent else 0.0
        self.sent = self.dropped = 0
        return fraction


def run(
    estimator: SendSideEstimator,
    link: Link,
    rate: float | None,
    seconds: float,
    start_us: int = 0,
) -> tuple[int, list[float]]:
    """Send at ``rate`` (None: follow the estimate) for ``seconds``; the estimates seen."""
    now = start_us
    end = start_us + int(seconds * 1e6)
    next_frame = now
    next_feedback = now + FEEDBACK_US
    next_report = now + 1_000_000
    estimates: list[float] = []
    while now < end:
        if now >= next_frame:
            current = rate if rate is not None else (estimator.estimate or 300_000.0)
            frame_bytes = int(current * FRAME_US / 1e6 / 8)
            while frame_bytes > 0:
                size = min(PACKET, frame_bytes)
                link.send(now, max(size, 100))
                frame_bytes -= size
            next_frame += FRAME_US
        if now >= next_feedback:
            estimate = estimator.on_feedback(link.feedback(now), now)
            if estimate is not None:
                estimates.append(estimate)
            next_feedback += FEEDBACK_US
        if now >= next_report:
            estimator.on_loss_report(link.report(), now)
            next_report += 1_000_000
        now += 1000
    return now, estimates


def test_no_estimate_before_feedback() -> None:
    estimator = SendSideEstimator()
    assert estimator.estimate is None
    assert estimator.on_feedback([], 0) is None


def test_a_link_that_carries_the_rate_is_not_congested_and_the_estimate_grows() -> None:
    estimator = SendSideEstimator()
    link = Link(capacity=5_000_000)
    _, estimates = run(estimator, link, 1_000_000, 6.0)
    assert estimator.usage is not Usage.OVERUSING
    # It grows past what is sent, but no further than what was tested allows.
    assert 1_000_000 < estimates[-1] <= 1.5 * 1_000_000 * 1.1 + 10_000


def test_reported_loss_before_any_feedback_is_no_estimate() -> None:
    estimator = SendSideEstimator()
    assert estimator.on_loss_report(0.5, 0) is None


def test_sending_above_the_capacity_is_overuse_and_the_estimate_drops_below_it() -> None:
    estimator = SendSideEstimator()
    link = Link(capacity=400_000, queue_ms=3000)  # a deep buffer: delay builds, no loss
    now, _ = run(estimator, link, 1_500_000, 0.6)
    # Within 1 s of the overload the estimate is below the link's capacity.
    now, estimates = run(estimator, link, 1_500_000, 0.6, now)
    assert min(estimates) < 400_000
    assert estimator.estimate is not None and FLOOR <= estimator.estimate < 400_000


def test_following_the_estimate_settles_near_the_capacity() -> None:
    estimator = SendSideEstimator()
    link = Link(capacity=800_000)
    now, _ = run(estimator, link, 1_500_000, 1.0)
    now, estimates = run(estimator, link, None, 20.0, now)
    tail = estimates[-100:]
    # AIMD around the bottleneck: never far above it, mostly close under it.
    assert max(tail) < 800_000 * 1.3
    assert sum(tail) / len(tail) > 800_000 * 0.5


def test_reported_loss_lowers_the_estimate_once_per_episode_and_low_loss_lifts_it_gradually() -> (
    None
):
    estimator = SendSideEstimator()
    link = Link(capacity=10_000_000)
    now, _ = run(estimator, link, 1_000_000, 2.0)
    before = estimator.estimate
    assert before is not None
    estimator.on_loss_report(0.2, now)  # a fifth lost: down by a tenth
    cut = estimator.estimate
    assert cut is not None and abs(cut - before * 0.9) < 1
    estimator.on_loss_report(0.2, now + 100_000)  # the same episode: no second cut
    assert estimator.estimate == cut
    estimator.on_loss_report(0.2, now + 500_000)
    assert estimator.estimate is not None and estimator.estimate < cut
    estimator.on_loss_report(0.05, now + 1_000_000)  # 2-10 %: hold
    assert estimator.estimate is not None and estimator.estimate < cut
    held = estimator.estimate
    estimator.on_loss_report(0.0, now + 1_500_000)  # none: it grows, 8 % a second
    assert estimator.estimate == pytest.approx(held * 1.08**0.5 + 500)
    for i in range(1, 40):  # ... until the delay-based estimate rules again
        estimator.on_loss_report(0.0, now + 1_500_000 + i * 1_000_000)
    assert estimator.estimate == estimator.aimd.rate


def test_a_probe_that_holds_lifts_the_loss_limit_to_what_it_showed() -> None:
    estimator = SendSideEstimator()
    link = Link(capacity=10_000_000)
    now, _ = run(estimator, link, 1_000_000, 2.0)
    delay = estimator.aimd.rate
    assert delay is not None
    estimator.on_loss_report(0.6, now)  # a shaper dropping most: down by 30 %
    limited = estimator.estimate
    assert limited is not None and limited < delay
    estimator.probe_result(limited * 0.9)  # showed less: nothing
    assert estimator.estimate == limited
    estimator.probe_result(limited * 1.2)  # more, though under the delay-based estimate
    assert estimator.estimate == pytest.approx(limited * 1.2)
    assert estimator.aimd.rate == delay


def test_a_probe_that_arrives_at_its_rate_raises_the_estimate() -> None:
    estimator = SendSideEstimator()
    link = Link(capacity=3_000_000)
    now, _ = run(estimator, link, 200_000, 3.0)
    low = estimator.estimate
    assert low == START  # what was sent vouches for less: the start value holds
    assert estimator.probe_result(1_500_000) == 1_500_000
    _, estimates = run(estimator, link, 1_500_000, 2.0, now)
    assert min(estimates) >= 1_400_000


def test_the_first_estimate_is_the_start_value_until_the_link_says_less() -> None:
    estimator = SendSideEstimator()
    link = Link(capacity=3_000_000)
    _, estimates = run(estimator, link, 100_000, 2.0)  # a start-up trickle on a fast link
    assert estimates and all(e == START for e in estimates)
    slow = SendSideEstimator()
    _, estimates = run(slow, Link(capacity=150_000), None, 4.0)  # sending what it says
    assert estimates[0] == START and estimates[-1] < 1.5 * 150_000


def test_a_probe_result_is_ignored_while_overusing() -> None:
    estimator = SendSideEstimator()
    link = Link(capacity=300_000)
    run(estimator, link, 1_500_000, 0.8)
    if estimator.usage is Usage.OVERUSING:
        before = estimator.estimate
        assert estimator.probe_result(5_000_000) == before


def test_garbage_feedback_does_not_break_it() -> None:
    estimator = SendSideEstimator()
    results = [
        PacketResult(0, 5_000_000, 1200, 10),
        PacketResult(1, 0, 1200, 10**12),
        PacketResult(2, -5, 0, -(10**9)),
        PacketResult(3, 10**12, 1200, None),
        PacketResult(4, 10**12 + 1, 1200, 5),
    ]
    for i in range(50):
        estimator.on_feedback(results, i * 50_000)
    estimate = estimator.estimate
    assert estimate is None or estimate >= FLOOR


def test_loss_cuts_stop_at_what_the_link_was_seen_to_carry() -> None:
    """Receiver reports count loss over the second before them: cuts 300 ms apart about
    one overflow must not compound below what kept arriving (a 400 kbit/s link)."""
    estimator = SendSideEstimator()
    now = 1_000_000
    seq = 0
    # 400 kbit/s arriving for 2 s: 1000 B every 20 ms.
    for _ in range(10):
        results = []
        for _ in range(10):
            results.append(PacketResult(seq, now, 1000, now + 5_000))
            seq += 1
            now += 20_000
        estimator.on_feedback(results, now)
    acked = estimator.acked
    assert acked is not None and 350_000 < acked < 450_000
    for _ in range(8):  # one report of 60 % lost after another, 400 ms apart
        now += 400_000
        estimator.on_loss_report(0.6, now)
    estimate = estimator.estimate
    assert estimate is not None and estimate >= 0.8 * acked


def _arrive(estimator: SendSideEstimator, start: int, seq: int, count: int, size: int,
            gap_us: int) -> tuple[int, int]:  # fmt: skip
    """``count`` packets of ``size`` B arriving ``gap_us`` apart (sent as they arrive)."""
    results = []
    for _ in range(count):
        results.append(PacketResult(seq, start, size, start + 5_000))
        seq += 1
        start += gap_us
    estimator.on_feedback(results, start)
    return start, seq


def test_an_overuse_decreases_to_what_the_link_delivers_after_a_drop() -> None:
    estimator = SendSideEstimator()
    now, seq = _arrive(estimator, 1_000_000, 0, 250, 1000, 8_000)  # 1 Mbit/s for 2 s
    now, seq = _arrive(estimator, now, seq, 30, 1000, 20_000)  # then 400 kbit/s
    throughput = estimator.throughput()
    assert throughput is not None and throughput < 550_000


def test_a_queue_draining_after_a_quiet_spell_shows_the_links_rate() -> None:
    """The SFU sent little (a track waiting for a keyframe), then a burst queued at a
    400 kbit/s link: what arrived over the last 500 ms is far under the link's rate,
    the burst's own arrivals are not."""
    estimator = SendSideEstimator()
    now, seq = _arrive(estimator, 1_000_000, 0, 100, 1000, 20_000)  # 400 kbit/s for 2 s
    now, seq = _arrive(estimator, now, seq, 20, 100, 20_000)  # 40 kbit/s of audio, 0.4 s
    now, seq = _arrive(estimator, now, seq, 12, 1000, 20_000)  # the burst, at the link's rate
    throughput = estimator.throughput()
    assert throughput is not None and throughput > 300_000


def test_the_loss_reported_after_a_decrease_cuts_no_lower_than_it() -> None:
    """After an overuse decrease the SFU sends less (a lower layer's keyframe awaited):
    what arrives falls, but the loss reported then is the old overflow's."""
    estimator = SendSideEstimator()
    now = 1_000_000
    estimator.aimd.update(Usage.NORMAL, 2_000_000.0, now, 0.1)
    estimator.aimd.update(Usage.OVERUSING, 2_000_000.0, now, 0.1, throughput=400_000.0)
    decreased = estimator.estimate
    assert decreased is not None and abs(decreased - 340_000) < 1
    estimator.acked = 150_000.0  # little sent since
    for _ in range(4):
        now += 400_000
        estimator.on_loss_report(0.75, now)
    estimate = estimator.estimate
    assert estimate is not None and estimate >= 0.85 * 0.85 * 400_000
    now += 3_000_000  # long after: what arrives is what the link carries
    estimator.on_loss_report(0.75, now)
    later = estimator.estimate
    assert later is not None and later < estimate


def test_an_overuse_that_lasts_decreases_again_a_round_trip_later_to_what_arrives_then() -> None:
    """The first decrease answers what arrived while a bottleneck's queue filled, which
    a token bucket's burst allowance inflates (a 400 kbit/s shaper delivered 1.2 Mbit/s
    in the newest packets): the estimate stayed at 1 Mbit/s for 3 s until losses cut it."""
    estimator = SendSideEstimator()
    aimd = estimator.aimd
    now = 1_000_000
    aimd.update(Usage.NORMAL, 2_000_000.0, now, 0.1)
    aimd.update(Usage.OVERUSING, 2_000_000.0, now, 0.1, throughput=1_200_000.0)
    assert aimd.rate == pytest.approx(1_020_000)
    # Within the round trip: what arrives still says little of the lower rate.
    aimd.update(Usage.OVERUSING, 2_000_000.0, now + 50_000, 0.1, throughput=450_000.0)
    assert aimd.rate == pytest.approx(1_020_000)
    aimd.update(Usage.OVERUSING, 2_000_000.0, now + 150_000, 0.1, throughput=450_000.0)
    assert aimd.rate == pytest.approx(382_500)
    # Never up while overusing, and no lower than BETA of what the link delivers.
    aimd.update(Usage.OVERUSING, 2_000_000.0, now + 400_000, 0.1, throughput=480_000.0)
    assert aimd.rate == pytest.approx(382_500)
    aimd.update(Usage.OVERUSING, 2_000_000.0, now + 700_000, 0.1, throughput=440_000.0)
    assert aimd.rate == pytest.approx(374_000)
    # A long round trip spaces the decreases 200 ms at most.
    aimd.update(Usage.OVERUSING, 2_000_000.0, now + 900_000, 2.0, throughput=400_000.0)
    assert aimd.rate == pytest.approx(340_000)
