"""Media metrics: a small helper protocol the SFU calls, and two implementations.

Domain code only calls :class:`MediaMetrics` methods. :class:`NoopMediaMetrics`
is the default; :class:`PrometheusMediaMetrics` registers its collectors on a
``CollectorRegistry`` it is given (no global registry). Labels are bounded:
only ``kind`` (audio/video), never a call or participant id.
"""

from __future__ import annotations

import collections
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector


class MediaMetrics(Protocol):
    def room_opened(self) -> None: ...
    def room_closed(self) -> None: ...
    def participant_joined(self) -> None: ...
    def participant_left(self) -> None: ...
    def packets_forwarded(self, kind: str, frames: int, packets: int, nbytes: int) -> None: ...
    def pli_sent(self) -> None: ...
    def keyframes_received(self, layer: int, count: int) -> None: ...
    def pli_relayed(self) -> None: ...
    def nack_received(self) -> None: ...
    def subscriber_skipped_to_keyframe(self) -> None: ...
    def frame_dropped_incomplete(self) -> None: ...
    def rtp_dropped(self, reason: str, count: int = 1) -> None: ...
    def nacks_sent(self, packets: int) -> None: ...
    def retransmitted(self, packets: int) -> None: ...
    def twcc_feedback_sent(self) -> None: ...
    def layer_switched(self, direction: str) -> None: ...
    def subscriber_estimate(self, bits_per_second: float) -> None: ...
    def layer_probe(self, held: bool) -> None: ...
    def padding_probe(self, raised: bool) -> None: ...
    def probe_bytes(self, nbytes: int) -> None: ...
    def paused_track_gone(self) -> None: ...
    def subscribe_offer_sent(self) -> None: ...
    def dominant_speaker_changed(self) -> None: ...
    def relayed(self, direction: str, kind: str, nbytes: int) -> None: ...
    def relay_pli(self, direction: str) -> None: ...
    def relay_nack(self, direction: str, packets: int) -> None: ...
    def relay_dropped(self, reason: str) -> None: ...
    def relay_links(self, count: int) -> None: ...
    def ice_restart(self, pc: str, outcome: str) -> None: ...


#: Reasons an incoming RTP/RTCP datagram is dropped (the ``reason`` label).
DROP_REASONS = ("malformed", "unknown_ssrc", "srtp", "padding", "duplicate")
#: Reasons a relay datagram from another node is dropped (media/relaywire.py, media/relay.py).
RELAY_DROP_REASONS = (
    "short",
    "long",
    "magic",
    "auth",
    "version",
    "type",
    "body",
    "replay",
    "unknown_peer",
    "unknown_stream",
    "malformed",
)


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

    def keyframes_received(self, layer: int, count: int) -> None:
        pass

    def pli_relayed(self) -> None:
        pass

    def nack_received(self) -> None:
        pass

    def subscriber_skipped_to_keyframe(self) -> None:
        pass

    def frame_dropped_incomplete(self) -> None:
        pass

    def rtp_dropped(self, reason: str, count: int = 1) -> None:
        pass

    def nacks_sent(self, packets: int) -> None:
        pass

    def retransmitted(self, packets: int) -> None:
        pass

    def twcc_feedback_sent(self) -> None:
        pass

    def layer_switched(self, direction: str) -> None:
        pass

    def subscriber_estimate(self, bits_per_second: float) -> None:
        pass

    def layer_probe(self, held: bool) -> None:
        pass

    def padding_probe(self, raised: bool) -> None:
        pass

    def probe_bytes(self, nbytes: int) -> None:
        pass

    def paused_track_gone(self) -> None:
        pass

    def subscribe_offer_sent(self) -> None:
        pass

    def dominant_speaker_changed(self) -> None:
        pass

    def relayed(self, direction: str, kind: str, nbytes: int) -> None:
        pass

    def relay_pli(self, direction: str) -> None:
        pass

    def relay_nack(self, direction: str, packets: int) -> None:
        pass

    def relay_dropped(self, reason: str) -> None:
        pass

    def relay_links(self, count: int) -> None:
        pass

    def ice_restart(self, pc: str, outcome: str) -> None:
        pass


class _ForwardedCollector(Collector):
    """The forwarded frames/packets/bytes counters, from plain integers."""

    def __init__(self, prefix: str, counts: dict[str, list[int]]) -> None:
        self._prefix = prefix
        self._counts = counts

    def describe(self) -> list[Metric]:
        return list(self._families())

    def collect(self) -> list[Metric]:
        return list(self._families())

    def _families(self) -> list[Metric]:
        p = self._prefix
        families = [
            CounterMetricFamily(
                f"{p}_sfu_forwarded_frames",
                "Frames forwarded to subscribers (counted at each frame's last packet)",
                labels=["kind"],
            ),
            CounterMetricFamily(
                f"{p}_sfu_forwarded_packets",
                "RTP packets sent to subscribers (before SRTP; retransmissions not included)",
                labels=["kind"],
            ),
            CounterMetricFamily(
                f"{p}_sfu_forwarded_bytes",
                "Payload bytes forwarded to subscribers",
                labels=["kind"],
            ),
        ]
        for kind, values in sorted(self._counts.items()):
            for family, value in zip(families, values, strict=True):
                family.add_metric([kind], value)
        return list(families)


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
        # Counted on the packet path: plain integers, read by a collector at
        # scrape time instead of three locked Counter.inc() per packet.
        self._forwarded_counts: dict[str, list[int]] = {}
        registry.register(_ForwardedCollector(p, self._forwarded_counts))
        self.plis_sent = Counter(
            f"{p}_sfu_pli_sent_total", "Keyframe requests sent to publishers", registry=registry
        )
        self.keyframes = Counter(
            f"{p}_sfu_keyframes_received_total",
            "Video keyframes received from publishers, by layer (0: the lowest or only one; "
            "Chromium's VP8 simulcast sends one on every layer when any is asked for)",
            ["layer"],
            registry=registry,
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
            "(malformed, unknown_ssrc, srtp: failed to unprotect, padding: no payload, "
            "duplicate: a video packet received again while cached, e.g. a publisher's "
            "RTX probe padding)",
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
        self.layer_switches = Counter(
            f"{p}_sfu_layer_switches_total",
            "Subscribers moved to another simulcast layer (up, down), or whose video was "
            "paused or resumed (pause, resume) for lack of bandwidth",
            ["direction"],
            registry=registry,
        )
        self.paused_tracks = Gauge(
            f"{p}_sfu_paused_tracks",
            "Subscribers' tracks whose video is paused (bandwidth or a hidden tile)",
            registry=registry,
        )
        self.estimates = Histogram(
            f"{p}_sfu_subscriber_estimate_bps",
            "Subscribers' downlink estimates (bit/s), one sample per allocation",
            buckets=(1e5, 2e5, 4e5, 7e5, 1e6, 1.5e6, 2.5e6, 4e6, 6e6, 1e7, 2e7),
            registry=registry,
        )
        self.probes = Counter(
            f"{p}_sfu_layer_probes_total",
            "Steps up tried above a subscriber's estimate, by outcome (held, backed_off)",
            ["outcome"],
            registry=registry,
        )
        self.padding_probes = Counter(
            f"{p}_sfu_padding_probes_total",
            "Probe clusters sent to subscribers (padding over transport-cc), by outcome: "
            "raised the estimate or not",
            ["outcome"],
            registry=registry,
        )
        self.padding_bytes = Counter(
            f"{p}_sfu_probe_bytes_total",
            "Bytes of probe padding sent to subscribers",
            registry=registry,
        )
        self.subscribe_offers = Counter(
            f"{p}_sfu_subscribe_offers_total",
            "Subscribe offers (renegotiations) the SFU sent to subscribers",
            registry=registry,
        )
        self.speaker_changes = Counter(
            f"{p}_sfu_dominant_speaker_changes_total",
            "Dominant speaker changes in SFU rooms (each time a participant becomes it)",
            registry=registry,
        )
        self.relay_packets = Counter(
            f"{p}_sfu_relay_packets_total",
            "RTP packets relayed between nodes of spanning rooms, by direction (out, in) "
            "and kind: one per packet per other node, whatever its subscriber count",
            ["direction", "kind"],
            registry=registry,
        )
        self.relay_bytes = Counter(
            f"{p}_sfu_relay_bytes_total",
            "Bytes of relay datagrams between nodes, by direction (out, in)",
            ["direction"],
            registry=registry,
        )
        self.relay_plis = Counter(
            f"{p}_sfu_relay_pli_total",
            "Keyframe requests relayed between nodes, by direction (out, in)",
            ["direction"],
            registry=registry,
        )
        self.relay_nacks = Counter(
            f"{p}_sfu_relay_nack_total",
            "Packets lost between nodes and asked for again (in: asked of this node, "
            "which resends them from its cache; out: asked by this node)",
            ["direction"],
            registry=registry,
        )
        self.relay_drops = Counter(
            f"{p}_sfu_relay_dropped_total",
            "Relay datagrams from other nodes dropped, by reason (auth: not signed with "
            "the cluster secret, replay, short, unknown_peer, unknown_stream, ...)",
            ["reason"],
            registry=registry,
        )
        self._relay_children: dict[tuple[str, str], tuple[Counter, Counter]] = {}
        self.ice_restarts = Counter(
            f"{p}_sfu_ice_restarts_total",
            "ICE restarts of SFU connections (a client's network changed), by connection "
            "(publish, subscribe) and outcome (ok: a new pair within the timeout; timeout)",
            ["pc", "outcome"],
            registry=registry,
        )
        self.relay_link_count = Gauge(
            f"{p}_sfu_relay_links",
            "Other nodes this node relays tracks with now (either way)",
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

    def forwarded_packets(self) -> int:
        """RTP packets forwarded to subscribers so far, every kind (node load)."""
        return sum(counts[1] for counts in self._forwarded_counts.values())

    def packets_forwarded(self, kind: str, frames: int, packets: int, nbytes: int) -> None:
        counts = self._forwarded_counts.get(kind)
        if counts is None:
            counts = self._forwarded_counts[kind] = [0, 0, 0]
        counts[0] += frames
        counts[1] += packets
        counts[2] += nbytes

    def pli_sent(self) -> None:
        self.plis_sent.inc()

    def keyframes_received(self, layer: int, count: int) -> None:
        self.keyframes.labels(str(layer)).inc(count)

    def pli_relayed(self) -> None:
        self.plis_relayed.inc()

    def nack_received(self) -> None:
        self.nacks.inc()

    def subscriber_skipped_to_keyframe(self) -> None:
        self.skips.inc()

    def frame_dropped_incomplete(self) -> None:
        self.incomplete.inc()

    def rtp_dropped(self, reason: str, count: int = 1) -> None:
        child = self._dropped.get(reason)
        if child is not None:
            child.inc(count)

    def nacks_sent(self, packets: int) -> None:
        self.nacked.inc(packets)

    def retransmitted(self, packets: int) -> None:
        self.retransmissions.inc(packets)

    def twcc_feedback_sent(self) -> None:
        self.twcc.inc()

    def layer_switched(self, direction: str) -> None:
        self.layer_switches.labels(direction).inc()
        if direction == "pause":
            self.paused_tracks.inc()
        elif direction == "resume":
            self.paused_tracks.dec()

    def subscriber_estimate(self, bits_per_second: float) -> None:
        self.estimates.observe(bits_per_second)

    def layer_probe(self, held: bool) -> None:
        self.probes.labels("held" if held else "backed_off").inc()

    def padding_probe(self, raised: bool) -> None:
        self.padding_probes.labels("raised" if raised else "not_raised").inc()

    def probe_bytes(self, nbytes: int) -> None:
        self.padding_bytes.inc(nbytes)

    def paused_track_gone(self) -> None:
        self.paused_tracks.dec()

    def subscribe_offer_sent(self) -> None:
        self.subscribe_offers.inc()

    def dominant_speaker_changed(self) -> None:
        self.speaker_changes.inc()

    def relayed(self, direction: str, kind: str, nbytes: int) -> None:
        # Per relayed packet: the labelled children looked up once.
        key = (direction, kind)
        children = self._relay_children.get(key)
        if children is None:
            children = self._relay_children[key] = (
                self.relay_packets.labels(direction, kind),
                self.relay_bytes.labels(direction),
            )
        children[0].inc()
        children[1].inc(nbytes)

    def relay_pli(self, direction: str) -> None:
        self.relay_plis.labels(direction).inc()

    def relay_nack(self, direction: str, packets: int) -> None:
        self.relay_nacks.labels(direction).inc(packets)

    def relay_dropped(self, reason: str) -> None:
        if reason in RELAY_DROP_REASONS:
            self.relay_drops.labels(reason).inc()

    def relay_links(self, count: int) -> None:
        self.relay_link_count.set(count)

    def ice_restart(self, pc: str, outcome: str) -> None:
        self.ice_restarts.labels(pc, outcome).inc()


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

    def keyframes_received(self, layer: int, count: int) -> None:
        self.counts[f"keyframes_layer_{layer}"] += count

    def pli_relayed(self) -> None:
        self.counts["pli_relayed"] += 1

    def nack_received(self) -> None:
        self.counts["nack_received"] += 1

    def subscriber_skipped_to_keyframe(self) -> None:
        self.counts["skipped_to_keyframe"] += 1

    def frame_dropped_incomplete(self) -> None:
        self.counts["incomplete_dropped"] += 1

    def rtp_dropped(self, reason: str, count: int = 1) -> None:
        self.counts[f"dropped_{reason}"] += count

    def nacks_sent(self, packets: int) -> None:
        self.counts["nack_sent"] += packets

    def retransmitted(self, packets: int) -> None:
        self.counts["retransmitted"] += packets

    def twcc_feedback_sent(self) -> None:
        self.counts["twcc_feedback"] += 1

    def layer_switched(self, direction: str) -> None:
        self.counts[f"layer_switch_{direction}"] += 1

    def subscriber_estimate(self, bits_per_second: float) -> None:
        self.counts["estimates"] += 1

    def layer_probe(self, held: bool) -> None:
        self.counts["probes_held" if held else "probes_backed_off"] += 1

    def padding_probe(self, raised: bool) -> None:
        self.counts["padding_probes_raised" if raised else "padding_probes_not_raised"] += 1

    def probe_bytes(self, nbytes: int) -> None:
        self.counts["probe_bytes"] += nbytes

    def paused_track_gone(self) -> None:
        self.counts["paused_gone"] += 1

    def subscribe_offer_sent(self) -> None:
        self.counts["subscribe_offers"] += 1

    def dominant_speaker_changed(self) -> None:
        self.counts["dominant_speaker_changes"] += 1

    def relayed(self, direction: str, kind: str, nbytes: int) -> None:
        self.counts[f"relay_{direction}_{kind}_packets"] += 1
        self.counts[f"relay_{direction}_bytes"] += nbytes

    def relay_pli(self, direction: str) -> None:
        self.counts[f"relay_pli_{direction}"] += 1

    def relay_nack(self, direction: str, packets: int) -> None:
        self.counts[f"relay_nack_{direction}"] += packets

    def relay_dropped(self, reason: str) -> None:
        self.counts[f"relay_dropped_{reason}"] += 1

    def relay_links(self, count: int) -> None:
        self.counts["relay_links"] = count

    def ice_restart(self, pc: str, outcome: str) -> None:
        self.counts[f"ice_restart_{pc}_{outcome}"] += 1
