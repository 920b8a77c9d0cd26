"""Transport-wide congestion control towards one subscriber: SDP, feedback, probe clusters.

The SFU offers ``transport-cc`` on every subscribe connection, as Chrome
expects of a sender (aiortc's own offer has no such extension: the SDP is
completed here, and the answered extension is handed back to aiortc's
transceivers so its senders lay it out). When the subscriber answers it,
every packet sent on the connection carries the connection's next
transport-wide sequence number (:mod:`media.sendlog`), and the subscriber
reports, every ~50-100 ms, when each arrived. :class:`TransportCc` joins
those reports with the send log and feeds the estimator
(:class:`media.gcc.SendSideEstimator`); the adaptation (media/adaptation.py)
reads :attr:`TransportCc.estimate`, falling back to REMB without it.

Probe clusters (:mod:`media.probe` sends them) are judged here: the packets
numbered within a cluster, sent faster than the estimate, show the rate the
link delivered them at; :meth:`media.gcc.SendSideEstimator.probe_result`
takes it.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .aiortc_compat import add_header_extension
from .gcc import PacketResult, SendSideEstimator
from .metrics import MediaMetrics
from .rtpheader import URI_TRANSPORT_CC
from .sendlog import SIZE, SendLog, monotonic_us, new_log
from .twcc import parse_feedback

logger = logging.getLogger(__name__)

#: The extension's id in subscribe offers (aiortc's own use 1-3, shared over BUNDLE).
EXT_ID = 5
#: An estimate from feedback older than this (s) is not one any more.
FEEDBACK_MAX_AGE = 2.0
#: A packet a feedback reports missing counts as lost when no feedback has said
#: it arrived this long after (s).
LOSS_GRACE = 0.3
#: An estimate falling below this share of the previous one is a drop (on_drop).
DROP = 0.8
#: A cluster not judged this long after it ended (s) is dropped.
CLUSTER_TIMEOUT = 3.0
#: A cluster that showed at least this share of its target held: the link
#: carries that much. One that fell short raises nothing: the rate its packets
#: arrived at is not the link's either (a shaper's burst lets a short cluster
#: through above the shaped rate).
PROBE_HELD = 0.9
#: A cluster of which less than this share was reported received is judged by
#: the rate the rest arrived at.
CLUSTER_RECEIVED = 0.8
#: Fewest packets of a cluster that must arrive for it to say anything.
CLUSTER_MIN_PACKETS = 5
#: Most padding numbers noted per cluster (bounded whatever the prober sends).
CLUSTER_MAX_PADDING = 4096
#: Codecs that get ``transport-cc`` feedback in the offer (not RTX, RED, FEC).
_MEDIA_CODEC = re.compile(r"^a=rtpmap:(\d+) (?!rtx/|red/|ulpfec/)", re.IGNORECASE)
_EXTMAP = re.compile(r"^a=extmap:(\d+)(?:/\w+)? (\S+)")
#: After a path change, receiver reports for this long still cover the outage
#: (a subscriber reports about once a second).
OUTAGE_REPORTS_S = 2.5


def offer_transport_cc(sdp: str, ext_id: int = EXT_ID) -> str:
    """``sdp`` (aiortc's subscribe offer) with ``transport-cc`` offered in every audio
    and video section: the extension at ``ext_id`` and the RTCP feedback per codec."""
    out: list[str] = []
    media = False
    for line in sdp.split("\r\n"):
        if line.startswith("m="):
            media = line.startswith(("m=audio", "m=video"))
        if media and line.startswith("a=extmap:") and URI_TRANSPORT_CC in line:
            continue  # offered once, as below
        out.append(line)
        if not media:
            continue
        if line.startswith("a=mid:"):
            out.append(f"a=extmap:{ext_id} {URI_TRANSPORT_CC}")
        match = _MEDIA_CODEC.match(line)
        if match:
            out.append(f"a=rtcp-fb:{match.group(1)} transport-cc")
    return "\r\n".join(out)


def answered_transport_cc(sdp: str, ext_id: int = EXT_ID) -> set[str]:
    """The mids whose sections of an answer take the offered extension (at the offered
    id, as they must): Chrome may take it for video and not for audio."""
    mids: set[str] = set()
    mid: str | None = None
    taken = False
    for line in [*sdp.splitlines(), "m="]:
        if line.startswith("m="):
            if mid is not None and taken:
                mids.add(mid)
            mid, taken = None, False
        elif line.startswith("a=mid:"):
            mid = line[6:].strip()
        else:
            match = _EXTMAP.match(line)
            if match and match.group(2) == URI_TRANSPORT_CC and int(match.group(1)) == ext_id:
                taken = True
    return mids


@dataclass
class Cluster:
    """One probe: the transport-wide numbers it spans and what came back of them."""

    first: int  # unwrapped
    target: float
    last: int | None = None  # unwrapped; None while it is being sent
    ended_at: float | None = None
    padded: int = 0  # bytes of padding the prober sent in it
    padding: set[int] = field(default_factory=set)  # its padding's numbers (unwrapped)
    reported_at: float | None = None  # when a feedback first reached its last packet
    results: list[PacketResult] = field(default_factory=list)


class TransportCc:
    """One subscribe connection's transport-wide numbering, feedback and estimate."""

    def __init__(
        self,
        name: str,
        *,
        accelerated: bool,
        metrics: MediaMetrics,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.log: SendLog = new_log(accelerated)
        self.estimator = SendSideEstimator()
        self._metrics = metrics
        self._clock = clock
        self.negotiated = False
        self.feedback_at: float | None = None
        self.feedbacks = 0
        self.skipped = 0
        self.lost = 0  # packets the feedback says never arrived
        self._reference: int | None = None  # the last unwrapped number seen
        self._highest: int | None = None  # the highest number a feedback reported
        # Reported missing, not (yet) counted lost: number -> (sent µs, size, when).
        self._missing: dict[int, tuple[int, int, float]] = {}
        self._clusters: list[Cluster] = []
        # Receiver reports before this (monotonic s) count an outage: not loss.
        self._loss_from = 0.0
        #: Told when the estimate falls below DROP times what it was.
        self.on_drop: Callable[[], None] | None = None
        #: Told each probe's outcome: (rate it showed or None, the rate it aimed at).
        self.on_probe: Callable[[float | None, float], None] | None = None

    def __repr__(self) -> str:
        return f"TransportCc({self.name})"

    # --- negotiation -----------------------------------------------------------

    def offer(self, sdp: str) -> str:
        return offer_transport_cc(sdp)

    def answered(self, pc: Any, answer_sdp: str) -> bool:
        """After the subscriber's answer is applied: lay the extension out where taken."""
        mids = answered_transport_cc(answer_sdp)
        if not mids:
            return self.negotiated
        for transceiver in pc.getTransceivers():
            if transceiver.mid in mids:
                add_header_extension(transceiver, EXT_ID, URI_TRANSPORT_CC)
        if not self.negotiated:
            logger.info("%r: transport-cc negotiated (mids %s)", self, sorted(mids))
        self.negotiated = True
        return True

    # --- the estimate ----------------------------------------------------------

    @property
    def estimate(self) -> float | None:
        """The send-side estimate (bit/s), None without fresh feedback."""
        at = self.feedback_at
        if not self.negotiated or at is None or self._clock() - at > FEEDBACK_MAX_AGE:
            return None
        return self.estimator.estimate

    def set_rtt(self, rtt: float) -> None:
        if 0 < rtt < 10:
            self.estimator.rtt = rtt

    def path_changed(self) -> None:
        """The connection moved to a new ICE pair (an ICE restart): what was lost on the
        way there is the old path's outage, not congestion of the new one."""
        self._loss_from = self._clock() + OUTAGE_REPORTS_S

    def on_loss_report(self, fraction_lost: float) -> None:
        """A receiver report's fraction lost about a stream sent on this connection."""
        if not self.negotiated or self._clock() < self._loss_from:
            return
        before = self.estimator.estimate
        after = self.estimator.on_loss_report(fraction_lost, monotonic_us())
        if before is not None and after is not None and after < DROP * before:
            if self.on_drop is not None:
                self.on_drop()
            logger.info(
                "%r: estimate %.0f -> %.0f kbit/s (receiver reports %.0f %% lost, acked %s)",
                self, before / 1000, after / 1000, 100 * fraction_lost,
                None if self.estimator.acked is None else round(self.estimator.acked / 1000),
            )  # fmt: skip

    def _unwrap(self, seq: int) -> int:
        ref = self._reference
        if ref is None:
            self._reference = seq
            return seq
        delta = (seq - ref) & 0xFFFF
        if delta >= 0x8000:
            delta -= 0x10000
        value = ref + delta
        if delta > 0:
            self._reference = value
        return value

    def on_feedback(self, packet: bytes) -> None:
        """One transport-wide feedback packet from the subscriber (RTPFB FMT 15).

        Each packet counts once: as received when a feedback first says it arrived,
        as lost only when it is still missing :data:`LOSS_GRACE` seconds after a
        feedback first said so (Chrome re-reports packets that reached its
        congestion controller late in a later feedback that overlaps the previous
        one). The estimate's loss-based part reads receiver reports instead
        (:meth:`on_loss_report`).
        """
        feedback = parse_feedback(packet)
        if feedback is None or not feedback.arrivals:
            self.skipped += 1
            return
        count = min(len(feedback.arrivals), SIZE)
        sent = self.log.lookup(feedback.base, count)
        base = self._unwrap(feedback.base)
        highest = self._highest
        missing = self._missing
        now = self._clock()
        results = []
        for i in range(count):
            entry = sent[i]
            seq = base + i
            if entry is None:
                continue  # not ours (any more)
            arrival = feedback.arrivals[i]
            if highest is not None and seq <= highest:
                if arrival is not None and missing.pop(seq, None) is not None:
                    results.append(PacketResult(seq, entry[0], entry[1], arrival))  # late
                continue  # reported before
            if arrival is None:
                missing.setdefault(seq, (entry[0], entry[1], now))
            else:
                results.append(PacketResult(seq, entry[0], entry[1], arrival))
        last = base + count - 1
        self._highest = last if highest is None else max(highest, last)
        self._unwrap((feedback.base + count - 1) & 0xFFFF)
        for seq in [q for q, (_, _, at) in missing.items() if now - at > LOSS_GRACE]:
            send_us, size, _ = missing.pop(seq)
            results.append(PacketResult(seq, send_us, size, None))
            self.lost += 1
        if len(missing) > SIZE:  # bounded, whatever the subscriber reports
            missing.clear()
        if not results:
            self.skipped += 1
            return
        results.sort(key=lambda r: r.seq)
        self.feedbacks += 1
        self.feedback_at = now
        before = self.estimator.estimate
        after = self.estimator.on_feedback(results, monotonic_us())
        if before is not None and after is not None and after < DROP * before:
            if self.on_drop is not None:
                self.on_drop()  # congestion: re-allocate now, not at the next tick
            e = self.estimator
            logger.info(
                "%r: estimate %.0f -> %.0f kbit/s (%s, trend %.2f, threshold %.1f, "
                "loss %.2f, acked %s)", self, before / 1000, after / 1000, e.usage.value,
                e.trendline.trend, e.trendline.threshold, e.loss,
                None if e.acked is None else round(e.acked / 1000),
            )  # fmt: skip
        if self._clusters:
            self._judge(results)

    # --- probe clusters ---------------------------------------------------------

    def begin_cluster(self, target: float) -> None:
        """A probe at ``target`` bit/s starts with the next packet sent."""
        self._clusters.append(Cluster(self._unwrap(self.log.next), target))

    def note_padding(self, first: int, end: int) -> None:
        """Numbers ``first`` up to ``end`` (exclusive, 16-bit) went out as padding of the
        cluster being sent."""
        cluster = next((c for c in self._clusters if c.last is None), None)
        if cluster is None:
            return
        count = (end - first) & 0xFFFF
        start = self._unwrap(first)
        if count <= CLUSTER_MAX_PADDING - len(cluster.padding):
            cluster.padding.update(range(start, start + count))

    def end_cluster(self, judge: bool = True, padded: int = 0) -> None:
        """The probe that began last sent its last packet, ``padded`` bytes of padding
        in all (``judge``: False drops it)."""
        if not judge:
            self._clusters = [c for c in self._clusters if c.last is not None]
            return
        for cluster in self._clusters:
            if cluster.last is None:
                cluster.last = self._unwrap((self.log.next - 1) & 0xFFFF)
                cluster.ended_at = self._clock()
                cluster.padded = padded

    def _judge(self, results: list[PacketResult]) -> None:
        now = self._clock()
        keep = []
        for cluster in self._clusters:
            cluster.results.extend(
                r
                for r in results
                if r.seq >= cluster.first and (cluster.last is None or r.seq <= cluster.last)
            )
            if cluster.last is None:
                keep.append(cluster)
                continue
            if (
                cluster.reported_at is None
                and self._highest is not None
                and self._highest >= cluster.last
            ):
                cluster.reported_at = now
            if cluster.reported_at is not None and (
                now - cluster.reported_at > LOSS_GRACE
                or not any(cluster.first <= q <= cluster.last for q in self._missing)
            ):
                # All of it reported: each packet received, or lost after the grace.
                self._conclude(cluster, cluster_rates(cluster.results))
            elif cluster.ended_at is not None and now - cluster.ended_at > CLUSTER_TIMEOUT:
                self._conclude(cluster, None)
            else:
                keep.append(cluster)
        self._clusters = keep

    def _conclude(self, cluster: Cluster, rates: tuple[float, float] | None) -> None:
        """``rates``: what the cluster showed and what it was sent at (None: nothing)."""
        rate = rates[0] if rates is not None else None
        before = self.estimator.estimate
        if rate is not None and rate >= PROBE_HELD * cluster.target:
            self.estimator.probe_result(rate)
        after = self.estimator.estimate
        raised = after is not None and (before is None or after > before)
        self._metrics.padding_probe(raised)
        media, padding = _tally(cluster)
        logger.info(
            "%r: probe at %.0f kbit/s (%d packets, sent at %s; received of media %d/%d, "
            "of padding %d/%d) showed %s, estimate %s", self, cluster.target / 1000,
            cluster.last - cluster.first + 1 if cluster.last is not None else 0,
            "?" if rates is None else f"{rates[1] / 1000:.0f} kbit/s",
            *media, *padding,
            "nothing" if rate is None else f"{rate / 1000:.0f} kbit/s",
            "none" if after is None else f"{after / 1000:.0f} kbit/s",
        )  # fmt: skip
        if self.on_probe is not None:
            self.on_probe(rate, cluster.target)


def _tally(cluster: Cluster) -> tuple[tuple[int, int], tuple[int, int]]:
    """(received, reported) of the cluster's media packets, and of its padding."""
    media = [0, 0]
    padding = [0, 0]
    for r in cluster.results:
        counts = padding if r.seq in cluster.padding else media
        counts[1] += 1
        counts[0] += r.arrival_us is not None
    return (media[0], media[1]), (padding[0], padding[1])


def cluster_rates(results: list[PacketResult]) -> tuple[float, float] | None:
    """The rate a probe cluster showed and the rate it was sent at; None if too
    little of it was reported to say.

    The rate it was sent at, unless the packets reported arrived spread wider
    than they were sent (a queue on the way): then that rate shrunk by as much,
    a little under. Judged on the packets reported received only, as Chrome's
    feedback does not count every padding packet it gets; those it does not
    count crossed the same link, so a link that could not carry them all would
    have delayed the counted ones. When much of it never came (a policer), the
    rate the rest arrived at.
    """
    received = [r for r in results if r.arrival_us is not None]
    if len(received) < CLUSTER_MIN_PACKETS:
        return None
    by_send = sorted(results, key=lambda r: r.send_us)
    send_span = by_send[-1].send_us - by_send[0].send_us
    sends = [r.send_us for r in received]
    arrivals = [r.arrival_us for r in received if r.arrival_us is not None]
    received_send_span = max(sends) - min(sends)
    receive_span = max(arrivals) - min(arrivals)
    if send_span <= 0 or received_send_span <= 0 or receive_span <= 0:
        return None
    send_rate = sum(r.size for r in by_send[:-1]) * 8e6 / send_span
    if len(received) < CLUSTER_RECEIVED * len(results):
        # Much of it never came (a policer dropped it): what did come is the rate.
        received_rate = sum(r.size for r in received[1:]) * 8e6 / receive_span
        return min(send_rate, received_rate) * 0.95, send_rate
    stretch = receive_span / received_send_span
    if stretch > 1 / 0.9:
        return send_rate / stretch * 0.95, send_rate
    return send_rate, send_rate
