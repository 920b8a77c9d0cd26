"""What a load run measures: snapshots, the timeline, percentiles, results, thresholds.

Everything here is pure (no I/O) except :class:`ServerSampler`, which reads
the server's Prometheus ``/metrics`` (process collector:
``process_cpu_seconds_total``, ``process_resident_memory_bytes``).
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

from media.loadtest.sfuclient import GAP_THRESHOLD, LONG_FREEZE, TrackStats

from .peers import PUBLISHER, PacketCounts, SignaledPeer

#: A received track that delivered nothing for longer than this froze (ms-level
#: audio/video gaps below it are jitter, not something a person notices).
FREEZE_THRESHOLD_S = GAP_THRESHOLD
#: The simulcast layer report counts freezes over this (issue #13: "no freeze
#: longer than 1 s" across a layer switch).
LONG_FREEZE_S = LONG_FREEZE

TrackKey = tuple[str, str, str]  # (receiving peer, source peer, kind)


# --- statistics --------------------------------------------------------------


@dataclass(frozen=True)
class Distribution:
    """Summary of a sample: count, mean, extremes and p50/p95/p99."""

    n: int
    mean: float
    min: float
    p50: float
    p95: float
    p99: float
    max: float


def percentile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolated percentile (``q`` in 0..100) of sorted values."""
    if not sorted_values:
        raise ValueError("no values")
    position = (len(sorted_values) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(sorted_values) - 1)
    fraction = position - low
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * fraction


def distribution(values: Iterable[float | None]) -> Distribution | None:
    """The :class:`Distribution` of the non-None values, None if there are none."""
    data = sorted(v for v in values if v is not None)
    if not data:
        return None
    return Distribution(
        n=len(data),
        mean=sum(data) / len(data),
        min=data[0],
        p50=percentile(data, 50),
        p95=percentile(data, 95),
        p99=percentile(data, 99),
        max=data[-1],
    )


# --- server metrics ----------------------------------------------------------


@dataclass(frozen=True)
class ServerSample:
    at: float
    cpu_seconds: float | None
    rss_bytes: float | None


#: A server with media workers: each worker's process metrics (``worker`` label).
_WORKER_PREFIX = "huddle_worker_"


def parse_process_metrics(text: str) -> tuple[float | None, float | None]:
    """``(process_cpu_seconds_total, process_resident_memory_bytes)`` from a scrape,
    each with its media workers' added (``huddle_worker_process_*``)."""
    cpu: float | None = None
    rss: float | None = None
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name = sample.name.removeprefix(_WORKER_PREFIX)
            if name == "process_cpu_seconds_total":
                cpu = (cpu or 0.0) + float(sample.value)
            elif name == "process_resident_memory_bytes":
                rss = (rss or 0.0) + float(sample.value)
    return cpu, rss


class ServerSampler:
    """Scrapes ``/metrics``; remembers the first failure instead of raising."""

    def __init__(self, fetch: Callable[[], Awaitable[str]], clock: Callable[[], float]) -> None:
        self._fetch = fetch
        self._clock = clock
        self.error: str | None = None

    async def sample(self) -> ServerSample | None:
        try:
            text = await self._fetch()
            cpu, rss = parse_process_metrics(text)
        except Exception as exc:  # any scrape failure is reported, not fatal
            if self.error is None:
                self.error = f"{type(exc).__name__}: {exc}"
            return None
        if cpu is None and rss is None and self.error is None:
            self.error = "the server's /metrics has no process_* metrics (not Linux?)"
        return ServerSample(self._clock(), cpu, rss)


# --- snapshots and the timeline ---------------------------------------------


@dataclass(frozen=True)
class TrackTotals:
    frames: int
    bytes: int
    packets: PacketCounts


Snapshot = dict[TrackKey, TrackTotals]


def snapshot(peers: Iterable[SignaledPeer]) -> Snapshot:
    """Cumulative counters of every received track of every peer, right now."""
    out: Snapshot = {}
    for peer in peers:
        packets = peer.packet_counts()
        for (source, kind), stats in peer.tracks().items():
            out[(peer.user_id, source, kind)] = TrackTotals(
                stats.frames, stats.bytes, packets.get((source, kind), PacketCounts())
            )
    return out


@dataclass(frozen=True)
class TimelinePoint:
    """One sampling interval of the whole run (rates are over the interval)."""

    t: float  # seconds since the run started
    phase: str  # ramp | settle | steady
    peers_planned: int
    peers_connected: int
    video_tracks: int
    video_fps: float | None  # mean over received video tracks
    video_fps_min: float | None  # the worst video track in this interval
    bitrate_bps: float  # everything every peer received
    loss_pct: float | None
    server_cpu_pct: float | None
    server_rss_bytes: float | None
    loadgen_cpu_pct: float | None
    errors: int


def interval_point(
    *,
    t: float,
    dt: float,
    phase: str,
    before: Snapshot,
    after: Snapshot,
    peers_planned: int,
    peers_connected: int,
    server_before: ServerSample | None,
    server_after: ServerSample | None,
    loadgen_cpu_s: float | None,
    errors: int,
) -> TimelinePoint:
    """Rates between two snapshots ``dt`` seconds apart."""
    fps: list[float] = []
    total_bytes = 0
    lost = expected = 0
    for key, now in after.items():
        prev = before.get(key, TrackTotals(0, 0, PacketCounts()))
        total_bytes += now.bytes - prev.bytes
        lost += now.packets.lost - prev.packets.lost
        expected += now.packets.expected - prev.packets.expected
        if key[2] == "video":
            fps.append((now.frames - prev.frames) / dt if dt > 0 else 0.0)
    cpu_pct: float | None = None
    rss: float | None = None
    if server_after is not None:
        rss = server_after.rss_bytes
        if (
            server_before is not None
            and server_before.cpu_seconds is not None
            and server_after.cpu_seconds is not None
            and server_after.at > server_before.at
        ):
            used = server_after.cpu_seconds - server_before.cpu_seconds
            cpu_pct = 100 * used / (server_after.at - server_before.at)
    return TimelinePoint(
        t=round(t, 3),
        phase=phase,
        peers_planned=peers_planned,
        peers_connected=peers_connected,
        video_tracks=len(fps),
        video_fps=sum(fps) / len(fps) if fps else None,
        video_fps_min=min(fps) if fps else None,
        bitrate_bps=total_bytes * 8 / dt if dt > 0 else 0.0,
        loss_pct=100 * max(0, lost) / expected if expected > 0 else None,
        server_cpu_pct=cpu_pct,
        server_rss_bytes=rss,
        loadgen_cpu_pct=100 * loadgen_cpu_s / dt if loadgen_cpu_s is not None and dt > 0 else None,
        errors=errors,
    )


# --- results -----------------------------------------------------------------


@dataclass(frozen=True)
class LayerChange:
    """From ``at_s`` (seconds since the run started) a video track arrived as ``layer``.

    ``layer`` is the publisher's rid whose picture is ``width`` x ``height``
    (the subscriber sees one SSRC whatever the layer, so the keyframes' size
    tells the layers apart), or ``"<width>x<height>"`` for a size no layer has.
    """

    at_s: float
    layer: str
    width: int
    height: int


def layer_changes(
    stats: TrackStats, layer_names: Mapping[tuple[int, int], str], t0: float
) -> list[LayerChange]:
    """The received picture size over time, as layers."""
    return [
        LayerChange(round(at - t0, 3), layer_names.get((w, h), f"{w}x{h}"), w, h)
        for at, w, h in stats.sizes
    ]


def layer_time(changes: list[LayerChange], end_s: float) -> dict[str, float]:
    """Seconds spent on each layer, from its first keyframe to the next change (or ``end_s``)."""
    out: dict[str, float] = {}
    for i, change in enumerate(changes):
        until = changes[i + 1].at_s if i + 1 < len(changes) else end_s
        out[change.layer] = round(out.get(change.layer, 0.0) + max(0.0, until - change.at_s), 3)
    return out


@dataclass(frozen=True)
class TrackResult:
    """One track a peer should receive: from ``source``, of ``kind``.

    Rates are over the steady window (or from the first frame if it came
    later); freezes count gaps over :data:`FREEZE_THRESHOLD_S` in the whole
    run, including a trailing one at the end.
    """

    source: str
    kind: str
    announced: bool
    frames: int
    bytes: int
    keyframes: int
    freezes: int
    max_gap_s: float
    first_frame_s: float | None  # from the SFU announcing the track
    fps: float
    bitrate_bps: float
    packets_received: int
    packets_lost: int
    retransmitted: int
    loss_pct: float | None
    #: Video: the layer received over time (see :class:`LayerChange`), the last
    #: one, how often it changed, seconds on each; freezes over LONG_FREEZE_S.
    layers: list[LayerChange] = field(default_factory=list)
    layer: str | None = None
    layer_switches: int = 0
    layer_time_s: dict[str, float] = field(default_factory=dict)
    long_freezes: int = 0
    #: What the SFU said it sends (``quality``): the layer at the end (None:
    #: one encoding, paused, or never said), how often and how long it paused.
    sfu_layer: str | None = None
    pauses: int = 0
    paused_s: float = 0.0

    @property
    def receiving(self) -> bool:
        return self.frames > 0


@dataclass(frozen=True)
class PeerResult:
    user_id: str
    name: str
    room: int
    role: str
    joined: bool
    join_latency_s: float | None  # HTTP join sent -> its connection up
    failures: list[str]
    plis_sent: int
    keyframes_forced: int  # PLIs this peer answered with a keyframe (publishers)
    tracks: list[TrackResult] = field(default_factory=list)
    #: Its receive cap (media.loadtest.netcap) and the RTP packets it dropped.
    receive_cap_bps: int | None = None
    cap_dropped_packets: int = 0

    @property
    def missing(self) -> list[TrackResult]:
        return [t for t in self.tracks if not t.receiving]


def track_result(
    peer: SignaledPeer,
    source: str,
    kind: str,
    *,
    steady: Snapshot,
    end: Snapshot,
    steady_at: float,
    end_at: float,
    layer_names: Mapping[tuple[int, int], str] | None = None,
    t0: float = 0.0,
) -> TrackResult:
    stats = peer.tracks().get((source, kind))
    key = (peer.user_id, source, kind)
    last = end.get(key, TrackTotals(0, 0, PacketCounts()))
    if stats is None:
        return TrackResult(source, kind, False, 0, 0, 0, 0, 0.0, None, 0.0, 0.0, 0, 0, 0, None)
    first = steady.get(key, TrackTotals(0, 0, PacketCounts()))
    start = steady_at
    if stats.first_frame_at is not None and stats.first_frame_at > steady_at:
        start = stats.first_frame_at
    window = end_at - start
    frames = last.frames - first.frames
    nbytes = last.bytes - first.bytes
    freezes = stats.gaps
    long_freezes = stats.long_freezes
    max_gap = stats.max_gap
    if stats.last_frame_at is not None:
        trailing = end_at - stats.last_frame_at
        max_gap = max(max_gap, trailing)
        if trailing > FREEZE_THRESHOLD_S:
            freezes += 1
        if trailing > LONG_FREEZE_S:
            long_freezes += 1
    changes = layer_changes(stats, layer_names or {}, t0) if kind == "video" else []
    packets = last.packets
    return TrackResult(
        source=source,
        kind=kind,
        announced=True,
        frames=stats.frames,
        bytes=stats.bytes,
        keyframes=stats.keyframes if kind == "video" else 0,
        freezes=freezes,
        max_gap_s=round(max_gap, 3),
        first_frame_s=stats.first_frame_delay,
        fps=frames / window if window > 0 and frames > 0 else 0.0,
        bitrate_bps=nbytes * 8 / window if window > 0 and nbytes > 0 else 0.0,
        packets_received=packets.received,
        packets_lost=packets.lost,
        retransmitted=packets.retransmitted,
        loss_pct=100 * packets.lost / packets.expected if packets.expected else None,
        layers=changes,
        layer=changes[-1].layer if changes else None,
        layer_switches=stats.size_switches if kind == "video" else 0,
        layer_time_s=layer_time(changes, round(end_at - t0, 3)),
        long_freezes=long_freezes,
        sfu_layer=stats.quality[-1][1] if stats.quality else None,
        pauses=stats.pauses,
        paused_s=round(stats.paused_for(end_at), 3),
    )


def peer_result(
    peer: SignaledPeer,
    *,
    name: str,
    room: int,
    sources: list[str],
    kinds: list[str],
    steady: Snapshot,
    end: Snapshot,
    steady_at: float,
    end_at: float,
    layer_names: Mapping[tuple[int, int], str] | None = None,
    t0: float = 0.0,
) -> PeerResult:
    """Results of a peer that joined: one track per (other publisher, kind).

    ``layer_names``: (width, height) -> rid of the publishers' simulcast
    layers; ``t0``: when the run started (layer changes are timed from it).
    """
    connected_at = peer.connected_at
    cap = peer.media.receive_cap
    tracks = [
        track_result(
            peer,
            source,
            kind,
            steady=steady,
            end=end,
            steady_at=steady_at,
            end_at=end_at,
            layer_names=layer_names,
            t0=t0,
        )
        for source in sources
        if source != peer.user_id
        for kind in kinds
    ]
    return PeerResult(
        user_id=peer.user_id,
        name=name,
        room=room,
        role=peer.role,
        joined=True,
        join_latency_s=connected_at - peer.started_at if connected_at is not None else None,
        failures=list(peer.failures),
        plis_sent=peer.media.plis_sent,
        keyframes_forced=sum(t.keyframes_forced for t in peer.media.tracks.values())
        + (peer.media.simulcast.keyframes_forced if peer.media.simulcast is not None else 0),
        tracks=tracks,
        receive_cap_bps=cap.bitrate if cap is not None else None,
        cap_dropped_packets=cap.dropped if cap is not None else 0,
    )


@dataclass(frozen=True)
class Summary:
    """The aggregate over every peer and track of the run."""

    peers_planned: int
    peers_joined: int
    peers_connected: int
    peers_failed: int
    tracks_expected: int
    tracks_receiving: int
    tracks_missing: int
    join_latency_s: Distribution | None
    first_frame_s: Distribution | None
    video_fps: Distribution | None
    video_bitrate_bps: Distribution | None
    audio_bitrate_bps: Distribution | None
    received_bitrate_bps: float  # every track of every peer, steady window
    packets_received: int
    packets_lost: int
    retransmitted: int
    loss_pct: float | None
    worst_track_loss_pct: float | None
    freezes: int
    tracks_with_freezes: int
    keyframes_received: int
    plis_sent: int
    server_cpu_pct: Distribution | None
    server_rss_bytes: Distribution | None
    loadgen_cpu_pct: Distribution | None
    #: Video tracks by the layer they were on at the end; layer changes and
    #: freezes over LONG_FREEZE_S, all video tracks.
    video_layers: dict[str, int] = field(default_factory=dict)
    layer_switches: int = 0
    long_freezes: int = 0
    pauses: int = 0  # video pauses the SFU announced (quality), all tracks


def summarize(peers: list[PeerResult], timeline: list[TimelinePoint]) -> Summary:
    tracks = [t for p in peers for t in p.tracks]
    received = sum(t.packets_received for t in tracks)
    lost = sum(t.packets_lost for t in tracks)
    steady = [p for p in timeline if p.phase == "steady"] or timeline
    return Summary(
        peers_planned=len(peers),
        peers_joined=sum(p.joined for p in peers),
        peers_connected=sum(p.join_latency_s is not None for p in peers),
        peers_failed=sum(bool(p.failures) or not p.joined for p in peers),
        tracks_expected=len(tracks),
        tracks_receiving=sum(t.receiving for t in tracks),
        tracks_missing=sum(not t.receiving for t in tracks),
        join_latency_s=distribution(p.join_latency_s for p in peers),
        first_frame_s=distribution(t.first_frame_s for t in tracks),
        video_fps=distribution(t.fps for t in tracks if t.kind == "video"),
        video_bitrate_bps=distribution(t.bitrate_bps for t in tracks if t.kind == "video"),
        audio_bitrate_bps=distribution(t.bitrate_bps for t in tracks if t.kind == "audio"),
        received_bitrate_bps=sum(t.bitrate_bps for t in tracks),
        packets_received=received,
        packets_lost=lost,
        retransmitted=sum(t.retransmitted for t in tracks),
        loss_pct=100 * lost / (received + lost) if received + lost else None,
        worst_track_loss_pct=max(
            (t.loss_pct for t in tracks if t.loss_pct is not None), default=None
        ),
        freezes=sum(t.freezes for t in tracks),
        tracks_with_freezes=sum(t.freezes > 0 for t in tracks),
        keyframes_received=sum(t.keyframes for t in tracks),
        plis_sent=sum(p.plis_sent for p in peers),
        server_cpu_pct=distribution(p.server_cpu_pct for p in steady),
        server_rss_bytes=distribution(p.server_rss_bytes for p in timeline),
        loadgen_cpu_pct=distribution(p.loadgen_cpu_pct for p in steady),
        video_layers=_count(t.layer for t in tracks if t.kind == "video" and t.layer),
        layer_switches=sum(t.layer_switches for t in tracks),
        long_freezes=sum(t.long_freezes for t in tracks if t.kind == "video"),
        pauses=sum(t.pauses for t in tracks),
    )


def _count(values: Iterable[str | None]) -> dict[str, int]:
    out: dict[str, int] = {}
    for value in values:
        if value is not None:
            out[value] = out.get(value, 0) + 1
    return dict(sorted(out.items()))


# --- thresholds --------------------------------------------------------------


@dataclass(frozen=True)
class Thresholds:
    """Pass/fail limits; None switches a check off."""

    max_missing_tracks: int | None = 0
    max_failed_peers: int | None = 0
    max_loss_pct: float | None = 2.0
    min_fps: float | None = 15.0
    max_freezes: int | None = None
    max_join_p95_s: float | None = None
    max_first_frame_p95_s: float | None = None


@dataclass(frozen=True)
class Check:
    name: str
    limit: float
    value: float | None
    ok: bool
    detail: str


def check(thresholds: Thresholds, summary: Summary, peers: list[PeerResult]) -> list[Check]:
    """Evaluate every threshold that is switched on."""
    out: list[Check] = []

    def at_most(name: str, limit: float | None, value: float | None, detail: str) -> None:
        if limit is not None:
            # A value that could not be measured fails: it is not evidence of success.
            out.append(Check(name, limit, value, value is not None and value <= limit, detail))

    at_most(
        "missing tracks",
        thresholds.max_missing_tracks,
        summary.tracks_missing,
        "tracks a peer should receive but got no frame of",
    )
    at_most(
        "failed peers",
        thresholds.max_failed_peers,
        summary.peers_failed,
        "peers that could not join, never connected, or saw an error",
    )
    at_most(
        "packet loss %",
        thresholds.max_loss_pct,
        summary.loss_pct if summary.packets_received else None,
        "media packets lost over packets expected, all received tracks",
    )
    if thresholds.min_fps is not None and summary.video_fps is not None:
        worst = summary.video_fps.min
        out.append(
            Check(
                "min video fps",
                thresholds.min_fps,
                worst,
                worst >= thresholds.min_fps,
                "every received video track's fps over the steady window (at least)",
            )
        )
    at_most(
        "freezes",
        thresholds.max_freezes,
        summary.freezes,
        f"gaps over {FREEZE_THRESHOLD_S * 1000:.0f} ms, all tracks",
    )
    at_most(
        "join p95 s",
        thresholds.max_join_p95_s,
        summary.join_latency_s.p95 if summary.join_latency_s else None,
        "HTTP join -> connection up",
    )
    at_most(
        "first frame p95 s",
        thresholds.max_first_frame_p95_s,
        summary.first_frame_s.p95 if summary.first_frame_s else None,
        "track announced -> first frame",
    )
    return out


def expected_kinds(audio_only: bool) -> list[str]:
    return ["audio"] if audio_only else ["audio", "video"]


def is_publisher(role: str) -> bool:
    return role == PUBLISHER
