"""Media metrics: a small helper protocol the SFU calls, and two implementations.

Domain code only calls :class:`MediaMetrics` methods. :class:`NoopMediaMetrics`
is the default; :class:`PrometheusMediaMetrics` registers its collectors on a
``CollectorRegistry`` it is given (no global registry). Labels are bounded:
only ``kind`` (audio/video), never a call or participant id.
"""

from __future__ import annotations

import collections
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge


class MediaMetrics(Protocol):
    def room_opened(self) -> None: ...
    def room_closed(self) -> None: ...
    def participant_joined(self) -> None: ...
    def participant_left(self) -> None: ...
    def packets_forwarded(self, kind: str, frames: int, packets: int, nbytes: int) -> None: ...
    def pli_sent(self) -> None: ...
    def pli_relayed(self) -> None: ...
    def nack_received(self) -> None: ...
    def subscriber_skipped_to_keyframe(self) -> None: ...
    def frame_dropped_incomplete(self) -> None: ...
    def rtp_dropped(self, reason: str) -> None: ...
    def nacks_sent(self, packets: int) -> None: ...
    def retransmitted(self, packets: int) -> None: ...
    def twcc_feedback_sent(self) -> None: ...


#: Reasons an incoming RTP/RTCP datagram is dropped (the ``reason`` label).
DROP_REASONS = ("malformed", "unknown_ssrc", "srtp", "padding")


class NoopMediaMetrics:
    """Counts nothing."""

    def room_opened(self) -> None:
        pass

    def room_closed(self) -> None:
        pass

    def participant_joined(self) -> None:
        pass

    def participant_left(self) -> None:
        pass

    def packets_forwarded(self, kind: str, frames: int, packets: int, nbytes: int) -> None:
        pass

    def pli_sent(self) -> None:
        pass

    def pli_relayed(self) -> None:
        pass

    def nack_received(self) -> None:
        pass

    def subscriber_skipped_to_keyframe(self) -> None:
        pass

    def frame_dropped_incomplete(self) -> None:
        pass

    def rtp_dropped(self, reason: str) -> None:
        pass

    def nacks_sent(self, packets: int) -> None:
        pass

    def retransmitted(self, packets: int) -> None:
        pass

    def twcc_feedback_sent(self) -> None:
        pass


class PrometheusMediaMetrics:
    """Prometheus collectors for the SFU, registered on ``registry``."""

    def __init__(self, registry: CollectorRegistry, prefix: str = "video_call") -> None:
        p = prefix
        self.rooms_active = Gauge(f"{p}_sfu_rooms_active", "SFU rooms open", registry=registry)
        self.room_cleanup = Counter(
            f"{p}_room_cleanup_total", "SFU rooms closed and released", registry=registry
        )
        self.participants_active = Gauge(
            f"{p}_sfu_participants_active", "Participants in SFU rooms", registry=registry
        )
        self.forwarded_frames = Counter(
            f"{p}_sfu_forwarded_frames_total",
            "Encoded frames handed to subscriber senders",
            ["kind"],
            registry=registry,
        )
        self.forwarded_packets = Counter(
            f"{p}_sfu_forwarded_packets_total",
            "RTP packets sent to subscribers (before SRTP; retransmissions not included)",
            ["kind"],
            registry=registry,
        )
        self.forwarded_bytes = Counter(
            f"{p}_sfu_forwarded_bytes_total",
            "Encoded payload bytes handed to subscriber senders",
            ["kind"],
            registry=registry,
        )
        self._forwarded: dict[str, tuple[Counter, Counter, Counter]] = {}
        self.plis_sent = Counter(
            f"{p}_sfu_pli_sent_total", "Keyframe requests sent to publishers", registry=registry
        )
        self.plis_relayed = Counter(
            f"{p}_sfu_pli_relayed_total",
            "Keyframe requests received from subscribers",
            registry=registry,
        )
        self.nacks = Counter(
            f"{p}_sfu_nack_received_total", "NACKs received from subscribers", registry=registry
        )
        self.skips = Counter(
            f"{p}_sfu_subscriber_keyframe_skips_total",
            "Times a slow subscriber skipped ahead to the next keyframe",
            registry=registry,
        )
        self.incomplete = Counter(
            f"{p}_sfu_incomplete_frames_dropped_total",
            "Incoming video frames dropped because packets were missing",
            registry=registry,
        )
        self.dropped = Counter(
            f"{p}_sfu_rtp_dropped_total",
            "Incoming RTP/RTCP datagrams dropped, by reason "
            "(malformed, unknown_ssrc, srtp: failed to unprotect, padding: no payload)",
            ["reason"],
            registry=registry,
        )
        self._dropped = {reason: self.dropped.labels(reason) for reason in DROP_REASONS}
        self.nacked = Counter(
            f"{p}_sfu_nack_sent_total",
            "Packets the SFU asked publishers to retransmit (NACK items)",
            registry=registry,
        )
        self.retransmissions = Counter(
            f"{p}_sfu_retransmitted_packets_total",
            "Packets resent to subscribers from the publisher packet cache",
            registry=registry,
        )
        self.twcc = Counter(
            f"{p}_sfu_twcc_feedback_sent_total",
            "Transport-wide congestion control feedback packets sent to publishers",
            registry=registry,
        )

    def room_opened(self) -> None:
        self.rooms_active.inc()

    def room_closed(self) -> None:
        self.rooms_active.dec()
        self.room_cleanup.inc()

    def participant_joined(self) -> None:
        self.participants_active.inc()

    def participant_left(self) -> None:
        self.participants_active.dec()

    def packets_forwarded(self, kind: str, frames: int, packets: int, nbytes: int) -> None:
        # Called per frame per subscriber: resolve the labelled children once.
        children = self._forwarded.get(kind)
        if children is None:
            children = self._forwarded[kind] = (
                self.forwarded_frames.labels(kind),
                self.forwarded_packets.labels(kind),
                self.forwarded_bytes.labels(kind),
            )
        if frames:
            children[0].inc(frames)
        if packets:
            children[1].inc(packets)
        if nbytes:
            children[2].inc(nbytes)

    def pli_sent(self) -> None:
        self.plis_sent.inc()

    def pli_relayed(self) -> None:
        self.plis_relayed.inc()

    def nack_received(self) -> None:
        self.nacks.inc()

    def subscriber_skipped_to_keyframe(self) -> None:
        self.skips.inc()

    def frame_dropped_incomplete(self) -> None:
        self.incomplete.inc()

    def rtp_dropped(self, reason: str) -> None:
        child = self._dropped.get(reason)
        if child is not None:
            child.inc()

    def nacks_sent(self, packets: int) -> None:
        self.nacked.inc(packets)

    def retransmitted(self, packets: int) -> None:
        self.retransmissions.inc(packets)

    def twcc_feedback_sent(self) -> None:
        self.twcc.inc()


class CountingMediaMetrics:
    """Plain counters, for tests and benchmarks."""

    def __init__(self) -> None:
        self.counts: collections.Counter[str] = collections.Counter()

    def room_opened(self) -> None:
        self.counts["rooms_opened"] += 1

    def room_closed(self) -> None:
        self.counts["rooms_closed"] += 1

    def participant_joined(self) -> None:
        self.counts["participants_joined"] += 1

    def participant_left(self) -> None:
        self.counts["participants_left"] += 1

    def packets_forwarded(self, kind: str, frames: int, packets: int, nbytes: int) -> None:
        self.counts[f"{kind}_frames"] += frames
        self.counts[f"{kind}_packets"] += packets
        self.counts[f"{kind}_bytes"] += nbytes

    def pli_sent(self) -> None:
        self.counts["pli_sent"] += 1

    def pli_relayed(self) -> None:
        self.counts["pli_relayed"] += 1

    def nack_received(self) -> None:
        self.counts["nack_received"] += 1

    def subscriber_skipped_to_keyframe(self) -> None:
        self.counts["skipped_to_keyframe"] += 1

    def frame_dropped_incomplete(self) -> None:
        self.counts["incomplete_dropped"] += 1

    def rtp_dropped(self, reason: str) -> None:
        self.counts[f"dropped_{reason}"] += 1

    def nacks_sent(self, packets: int) -> None:
        self.counts["nack_sent"] += packets

    def retransmitted(self, packets: int) -> None:
        self.counts["retransmitted"] += packets

    def twcc_feedback_sent(self) -> None:
        self.counts["twcc_feedback"] += 1
