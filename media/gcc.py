"""A send-side bandwidth estimate per subscriber, from its transport-wide feedback.

Google Congestion Control as libwebrtc runs it for what Chrome sends
(draft-ietf-rmcat-gcc-02 and libwebrtc's ``goog_cc``), reduced to what an
SFU needs. Every feedback tells, per packet the SFU sent, when it arrived;
with the send times from the connection's log (:mod:`media.sendlog`):

- **delay-based**: packets are grouped in bursts (:data:`BURST_US` of send
  time); the change of one-way delay between groups is accumulated, smoothed
  and its trend over the last :data:`WINDOW` groups fitted by least squares
  (:class:`Trendline`). A trend above an adaptive threshold for a while is
  *overuse* (queues are building), below minus the threshold *underuse*;
- **rate control** (:class:`Aimd`): on overuse the estimate drops to
  :data:`BETA` times the rate that actually arrived; otherwise it grows, by
  :data:`GROWTH` per second far from the last congestion point and by about
  a packet per round trip near it, never above :data:`ACKED_CAP` times what
  arrived (an estimate is only as good as the traffic that tested it);
- **loss-based**, from the subscriber's RTCP receiver reports (as
  libwebrtc's loss-based control v1): more than :data:`LOSS_HIGH` lost lowers
  the estimate by half the loss, at most once per :data:`LOSS_CUT_GAP_US` plus
  a round trip; under :data:`LOSS_LOW` the limit grows again by
  :data:`LOSS_GROWTH` per second until the delay-based estimate rules, and a
  probe that holds lifts it to what it showed (libwebrtc's loss-based control
  grows the same way: lifting it at once would go straight back to a
  delay-based estimate that a shaper with a full queue never lowered, and
  congest the link again at every report without loss). (Transport-wide
  feedback says "not received" also of packets Chrome received but counted
  late; its receiver reports count media packets that never came.)
- **probes** (:meth:`SendSideEstimator.probe_result`): a burst sent faster
  than the estimate (padding, media/probe.py) that arrives as fast as it was
  sent proves the link carries that rate: the estimate jumps to it.

Everything is a pure function of the feedback and the times given; nothing
here reads a clock. Rates are bit/s, times µs.
"""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass
from enum import Enum

#: Packets sent within this long of a group's first are one group (a burst).
BURST_US = 5_000
#: Groups in the trend's least-squares window, and the smoothing of the delay.
WINDOW = 20
SMOOTHING = 0.9
THRESHOLD_GAIN = 4.0
#: The adaptive threshold (ms of modified trend): start, bounds, adaptation rates.
#: libwebrtc's floor is 6; a receiver whose arrival times jitter with its CPU
#: (browsers on a busy machine) shows trends of 0.03-0.25 with no queue at all,
#: so the floor here is higher: a real bottleneck builds delay far faster
#: (sending 1.5x its rate into one is a trend of 0.5, 120 ms here), and
#: receiver-reported loss catches the rest.
THRESHOLD_START = 40.0
THRESHOLD_MIN = 40.0
THRESHOLD_MAX = 600.0
K_UP = 0.0087
K_DOWN = 0.039
#: Overuse must last this long (ms) before it counts (libwebrtc: 10; CPU
#: jitter comes in bursts shorter than a real queue's growth).
OVERUSE_TIME_MS = 100.0
#: On overuse the estimate becomes this share of what arrived.
BETA = 0.85
#: While overuse lasts the estimate decreases again (to BETA of what arrives
#: then) once a round trip after the last decrease, the round trip taken
#: between these bounds (s).
REDUCE_INTERVAL_MIN = 0.01
REDUCE_INTERVAL_MAX = 0.2
#: Multiplicative growth per second, far from the last congestion point.
GROWTH = 1.08
#: The estimate never exceeds this times the arrived rate (plus ACKED_SLACK).
ACKED_CAP = 1.5
ACKED_SLACK = 10_000.0
#: The arrived ("acked") rate: sampled over windows of this much arrival time
#: (the first one longer), each sample weighed by how far it lies from the
#: estimate (libwebrtc's acknowledged-bitrate estimator): an SFU waiting for a
#: keyframe, or sending a paused track nothing, sends less than the link
#: carries, and the windows of that must not pass for the link's rate.
ACKED_WINDOW_US = 150_000
ACKED_FIRST_WINDOW_US = 500_000
#: What an overuse decreases to: the rate packets arrived at over this long, or
#: over the newest this many packets if faster (spanning at least this much).
RECENT_US = 500_000
RECENT_PACKETS = 10
RECENT_MIN_SPAN_US = 20_000
LOSS_LOW = 0.02
LOSS_HIGH = 0.10
LOSS_CUT_GAP_US = 300_000
#: A loss-based cut stops at this share of the arrived rate.
LOSS_ACKED_SHARE = BETA
#: Receiver reports this long after a decrease on overuse report its overflow
#: (µs): their loss cuts no lower than that decrease did.
LOSS_AFTERMATH_US = 2_500_000
#: Growth per second of the loss-based limit while reports show under LOSS_LOW.
LOSS_GROWTH = 1.08
#: Lowest estimate (bit/s): audio must always fit.
FLOOR = 30_000.0
#: The first estimate (bit/s) when less has arrived yet, as mediasoup's
#: ``initialAvailableOutgoingBitrate``: what arrives at first is only what a
#: start-up allocation sent (audio, a keyframe), and starting from that would
#: pause video whose padding could then not probe its way back. Kept until
#: the link shows congestion (growth is capped by what arrives, never pulled
#: down by it).
START = 600_000.0
#: Round trip assumed before one is measured (s).
DEFAULT_RTT = 0.1


class Usage(Enum):
    NORMAL = "normal"
    OVERUSING = "overusing"
    UNDERUSING = "underusing"


@dataclass(frozen=True, slots=True)
class PacketResult:
    """One sent packet as a feedback reports it."""

    seq: int  # transport-wide sequence number, unwrapped
    send_us: int
    size: int  # bytes
    arrival_us: int | None  # None: not received


class Trendline:
    """The delay-based detector: the trend of one-way delay change, against a threshold."""

    def __init__(self) -> None:
        self._accumulated = 0.0
        self._smoothed = 0.0
        self._samples: deque[tuple[float, float]] = deque(maxlen=WINDOW)
        self._first_arrival: float | None = None
        self._deltas = 0
        self.threshold = THRESHOLD_START
        self._last_update: float | None = None
        self._over_ms = -1.0
        self._over_count = 0
        self._previous_trend = 0.0
        self.trend = 0.0
        self.usage = Usage.NORMAL

    def update(self, delay_ms: float, send_delta_ms: float, arrival_ms: float) -> Usage:
        """One group's delay change (``arrival delta - send delta``) arriving at ``arrival_ms``."""
        self._deltas = min(self._deltas + 1, 1000)
        self._accumulated += delay_ms
        self._smoothed = SMOOTHING * self._smoothed + (1 - SMOOTHING) * self._accumulated
        if self._first_arrival is None:
            self._first_arrival = arrival_ms
        self._samples.append((arrival_ms - self._first_arrival, self._smoothed))
        if len(self._samples) == WINDOW:
            slope = _slope(self._samples)
            if slope is not None:
                self.trend = slope
        self._detect(send_delta_ms, arrival_ms)
        return self.usage

    def _detect(self, send_delta_ms: float, now_ms: float) -> None:
        modified = min(self._deltas, 60) * self.trend * THRESHOLD_GAIN
        if modified > self.threshold:
            if self._over_ms < 0:
                self._over_ms = send_delta_ms / 2
            else:
                self._over_ms += send_delta_ms
            self._over_count += 1
            if (
                self._over_ms > OVERUSE_TIME_MS
                and self._over_count > 1
                and self.trend >= self._previous_trend
            ):
                self._over_ms = 0.0
                self._over_count = 0
                self.usage = Usage.OVERUSING
        elif modified < -self.threshold:
            self._over_ms = -1.0
            self._over_count = 0
            self.usage = Usage.UNDERUSING
        else:
            self._over_ms = -1.0
            self._over_count = 0
            self.usage = Usage.NORMAL
        self._previous_trend = self.trend
        self._adapt(modified, now_ms)

    def _adapt(self, modified: float, now_ms: float) -> None:
        last, self._last_update = self._last_update, now_ms
        if last is None or abs(modified) > self.threshold + 15.0:
            return  # a spike: do not let it move the threshold
        k = K_DOWN if abs(modified) < self.threshold else K_UP
        elapsed = min(max(now_ms - last, 0.0), 100.0)
        self.threshold += k * (abs(modified) - self.threshold) * elapsed
        self.threshold = min(max(self.threshold, THRESHOLD_MIN), THRESHOLD_MAX)


def _slope(samples: deque[tuple[float, float]]) -> float | None:
    n = len(samples)
    mean_x = sum(x for x, _ in samples) / n
    mean_y = sum(y for _, y in samples) / n
    num = sum((x - mean_x) * (y - mean_y) for x, y in samples)
    den = sum((x - mean_x) ** 2 for x, _ in samples)
    return num / den if den else None


class Aimd:
    """Additive-increase, multiplicative-decrease of the delay-based estimate."""

    def __init__(self) -> None:
        self.rate: float | None = None
        self._holding = False
        self._capacity: float | None = None  # kbit/s arrived at the last overuses (EWMA)
        self._capacity_var = 0.4
        self._last_us: int | None = None
        #: The last decrease on overuse: (when, the rate the link delivered then).
        self.decreased: tuple[int, float] | None = None

    def update(
        self,
        usage: Usage,
        acked: float | None,
        now_us: int,
        rtt: float,
        throughput: float | None = None,
    ) -> float | None:
        """``acked``: the arrived rate that caps growth; ``throughput``: what the link
        delivered just now, that an overuse decreases to (``acked`` if None)."""
        last, self._last_us = self._last_us, now_us
        if acked is None:
            return self.rate
        if self.rate is None:
            self.rate = max(acked, START)
        elapsed = 0.0 if last is None else min(max(now_us - last, 0), 1_000_000) / 1e6
        if usage is Usage.OVERUSING:
            delivered = acked if throughput is None else throughput
            if not self._holding:
                self._decrease(delivered, now_us)
            elif self._time_to_reduce_further(now_us, rtt) and BETA * delivered < self.rate:
                # Still overusing: the first decrease answered what arrived while the
                # queue filled (a bottleneck's burst allowance delivers a few packets
                # at line rate); what arrives now is nearer the link's rate.
                self._decrease(delivered, now_us)
            self._holding = True
            return self.rate
        if usage is Usage.UNDERUSING:
            self._holding = True  # queues draining: hold until they are empty
            return self.rate
        self._holding = False
        if self._near_capacity():
            packet_bits = 1200 * 8
            response = rtt + 0.1
            grown = self.rate + max(1000.0, packet_bits * elapsed / response)
        else:
            grown = self.rate * GROWTH**elapsed
        # Growth stops at what the arrived rate vouches for; it never pulls the estimate down.
        limit = ACKED_CAP * acked + ACKED_SLACK
        self.rate = grown if grown <= limit else max(self.rate, limit)
        return self.rate

    def _decrease(self, delivered: float, now_us: int) -> None:
        assert self.rate is not None
        self._note_capacity(delivered)
        self.rate = max(FLOOR, min(self.rate, BETA * delivered))
        self.decreased = (now_us, delivered)

    def _time_to_reduce_further(self, now_us: int, rtt: float) -> bool:
        """Another decrease while overuse lasts: a round trip after the last one
        (10-200 ms), when the feedback shows what the lower rate did (libwebrtc's
        AimdRateControl::TimeToReduceFurther)."""
        if self.decreased is None:
            return True
        interval = min(max(rtt, REDUCE_INTERVAL_MIN), REDUCE_INTERVAL_MAX)
        return now_us - self.decreased[0] >= interval * 1e6

    def _note_capacity(self, acked: float) -> None:
        """The arrived rate at an overuse: where the link's capacity is (kbit/s
        internally, as libwebrtc's link capacity estimator)."""
        kbps = acked / 1000
        if self._capacity is None or abs(kbps - self._capacity) > 3 * self._deviation():
            self._capacity = kbps  # far from the last: the link changed
            return
        error = self._capacity - kbps
        self._capacity = 0.95 * self._capacity + 0.05 * kbps
        var = 0.95 * self._capacity_var + 0.05 * error * error / max(self._capacity, 1.0)
        self._capacity_var = min(max(var, 0.4), 2.5)

    def _deviation(self) -> float:
        return float((self._capacity_var * (self._capacity or 0.0)) ** 0.5)

    def _near_capacity(self) -> bool:
        if self._capacity is None or self.rate is None:
            return False
        return abs(self.rate / 1000 - self._capacity) <= 3 * self._deviation()

    def set(self, rate: float) -> None:
        """A probe proved ``rate``: continue from there."""
        self.rate = rate
        self._capacity = None  # the link changed: grow fast again


class AckedRate:
    """The rate packets arrive at (bit/s), as a Bayesian estimate over short windows.

    A window's sample far below the estimate is uncertain and moves it little; a
    gap longer than a window (nothing sent) starts the next window afresh
    instead of counting as silence.
    """

    def __init__(self) -> None:
        self.rate: float | None = None  # kbit/s internally
        self._var = 50.0
        self._window_us = 0
        self._bytes = 0
        self._last_us: int | None = None
        self._first = True

    @property
    def bitrate(self) -> float | None:
        """The estimate; before the first window closes, what arrived in it so far
        (once it spans a short window)."""
        if self.rate is not None:
            return self.rate * 1000.0
        if self._window_us >= ACKED_WINDOW_US:
            return self._bytes * 8e6 / self._window_us
        return None

    def update(self, arrival_us: int, size: int) -> None:
        last, self._last_us = self._last_us, arrival_us
        window = ACKED_FIRST_WINDOW_US if self._first else ACKED_WINDOW_US
        if last is not None:
            elapsed = arrival_us - last
            if elapsed < 0:
                elapsed = 0  # reordered: counted where it is
            if elapsed > window:
                self._bytes = 0  # a gap: nothing was sent, not nothing carried
                self._window_us %= window
            self._window_us += elapsed
        if self._window_us >= window:
            self._sample(self._bytes * 8 / (window / 1000), window)
            self._window_us -= window
            self._bytes = 0
            self._first = False
        self._bytes += size

    def _sample(self, kbps: float, window_us: int) -> None:
        rate = self.rate
        if rate is None:
            self.rate = kbps
            return
        uncertainty = 10.0 * abs(rate - kbps) / (rate + min(kbps, 25_000.0))
        if window_us < ACKED_FIRST_WINDOW_US and kbps < rate:
            uncertainty *= 2.0  # a short window under the estimate: likely just little sent
        sample_var = uncertainty * uncertainty
        predicted_var = self._var + 5.0
        self.rate = (sample_var * rate + predicted_var * kbps) / (sample_var + predicted_var)
        self.rate = max(self.rate, 0.0)
        self._var = sample_var * predicted_var / (sample_var + predicted_var)


class SendSideEstimator:
    """One subscriber connection's estimate of what it can be sent (bit/s)."""

    def __init__(self) -> None:
        self.trendline = Trendline()
        self.aimd = Aimd()
        self.rtt = DEFAULT_RTT
        self._group: tuple[int, int, int] | None = None  # first send, last send, last arrival
        self._previous: tuple[int, int] | None = None  # last send, last arrival of the last group
        self._acked = AckedRate()
        self._recent: deque[tuple[int, int]] = deque()  # (arrival_us, size), last 500 ms
        self._recent_bytes = 0
        self._loss_rate: float | None = None
        self._cut_at = -(10**12)  # when loss last lowered the estimate (µs)
        self._loss_at: int | None = None  # the last loss report (µs)
        self.loss = 0.0
        self.acked: float | None = None
        self.feedbacks = 0

    @property
    def estimate(self) -> float | None:
        """The estimate now; None until feedback has measured anything."""
        delay = self.aimd.rate
        if delay is None:
            return None
        loss = self._loss_rate
        return max(FLOOR, delay if loss is None else min(delay, loss))

    @property
    def usage(self) -> Usage:
        return self.trendline.usage

    def on_feedback(self, results: list[PacketResult], now_us: int) -> float | None:
        """Take one feedback's packets (in sequence order); returns the estimate."""
        if not results:
            return self.estimate
        self.feedbacks += 1
        received = sorted(
            (r for r in results if r.arrival_us is not None), key=lambda r: r.arrival_us or 0
        )
        for r in received:
            assert r.arrival_us is not None
            self._ack(r.arrival_us, r.size)
            self._group_packet(r.send_us, r.arrival_us)
        self.aimd.update(
            self.trendline.usage, self.acked, now_us, self.rtt, throughput=self.throughput()
        )
        return self.estimate

    def throughput(self) -> float | None:
        """What the link delivered just now (bit/s), that an overuse decreases to.

        The arrived rate over the last :data:`RECENT_US`, or over the newest
        :data:`RECENT_PACKETS` if that is faster (a queue draining delivers at the
        link's rate, however little was sent before it), never above the
        long-run arrived rate (:class:`AckedRate`: a receiver that stamps a batch
        of arrivals late makes a short span look fast)."""
        recent = self._recent
        if not recent:
            return self.acked
        span = recent[-1][0] - recent[0][0]
        rates = []
        if span >= RECENT_US // 4:
            rates.append(self._recent_bytes * 8e6 / span)
        if len(recent) > RECENT_PACKETS:
            first = recent[-RECENT_PACKETS - 1][0]
            newest_span = recent[-1][0] - first
            if newest_span >= RECENT_MIN_SPAN_US:
                size = sum(
                    size for _, size in itertools.islice(recent, len(recent) - RECENT_PACKETS, None)
                )
                rates.append(size * 8e6 / newest_span)
        if not rates:
            return self.acked
        rate = max(rates)
        return rate if self.acked is None else min(rate, self.acked)

    def _ack(self, arrival_us: int, size: int) -> None:
        self._acked.update(arrival_us, size)
        self.acked = self._acked.bitrate
        recent = self._recent
        recent.append((arrival_us, size))
        self._recent_bytes += size
        while arrival_us - recent[0][0] > RECENT_US:
            self._recent_bytes -= recent.popleft()[1]

    def _group_packet(self, send_us: int, arrival_us: int) -> None:
        group = self._group
        if group is None:
            self._group = (send_us, send_us, arrival_us)
            return
        first_send, last_send, last_arrival = group
        if send_us - first_send <= BURST_US and send_us >= first_send:
            self._group = (first_send, max(last_send, send_us), max(last_arrival, arrival_us))
            return
        if send_us < first_send:
            return  # reordered from before this group: not a new group
        # The group is complete: compare it with the one before.
        previous = self._previous
        self._previous = (last_send, last_arrival)
        self._group = (send_us, send_us, arrival_us)
        if previous is None:
            return
        send_delta = (last_send - previous[0]) / 1000
        arrival_delta = (last_arrival - previous[1]) / 1000
        if send_delta < 0 or arrival_delta > 3000:
            return  # a reset of the receiver's clock or a long pause: skip the pair
        self.trendline.update(arrival_delta - send_delta, send_delta, last_arrival / 1000)

    def on_loss_report(self, fraction_lost: float, now_us: int) -> float | None:
        """A receiver report's fraction lost (0..1) about a stream sent to the subscriber."""
        self.loss = fraction_lost
        last, self._loss_at = self._loss_at, now_us
        delay = self.aimd.rate
        if delay is None:
            return self.estimate
        if fraction_lost > LOSS_HIGH:
            if now_us - self._cut_at >= LOSS_CUT_GAP_US + self.rtt * 1e6:
                base = min(self._loss_rate if self._loss_rate is not None else delay, delay)
                cut = base * (1 - fraction_lost / 2)
                # Not below what the link was seen to carry: a receiver report counts
                # loss over the second before it, and cuts 300 ms apart would
                # otherwise compound the same episode's loss down to a pause.
                carried = LOSS_ACKED_SHARE * self.acked if self.acked is not None else 0.0
                decreased = self.aimd.decreased
                if decreased is not None and now_us - decreased[0] <= LOSS_AFTERMATH_US:
                    # The loss of the overflow that decrease answered, reported late:
                    # the link delivered that rate then (the SFU may send less since,
                    # waiting for a lower layer's keyframe, which lowers what arrives).
                    carried = max(carried, LOSS_ACKED_SHARE * decreased[1])
                self._loss_rate = max(FLOOR, min(base, max(cut, carried)))
                self._cut_at = now_us  # one cut per loss episode (300 ms + RTT apart)
        elif fraction_lost < LOSS_LOW and self._loss_rate is not None:
            elapsed = 0.0 if last is None else min(max(now_us - last, 0), 1_000_000) / 1e6
            grown = self._loss_rate * LOSS_GROWTH**elapsed + 1000 * elapsed
            # Up to the delay-based estimate: then no loss limit.
            self._loss_rate = None if grown >= delay else grown
        return self.estimate

    def probe_result(self, rate: float) -> float | None:
        """A probe cluster arrived at ``rate``: the link carries at least that."""
        if self.trendline.usage is Usage.OVERUSING:
            return self.estimate
        current = self.aimd.rate
        if current is None or rate > current:
            self.aimd.set(rate)
            self._loss_rate = None
        elif self._loss_rate is not None and rate > self._loss_rate:
            self._loss_rate = rate  # the link carried that, loss or not
        return self.estimate
