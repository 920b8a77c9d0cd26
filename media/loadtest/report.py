"""Reports of a load run: a summary table, JSON for machines, HTML for people.

The HTML report is one self-contained file: inline CSS and SVG charts drawn
here, no JavaScript, nothing fetched from the network.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from .metrics import (
    FREEZE_THRESHOLD_S,
    LONG_FREEZE_S,
    Distribution,
    PeerResult,
    TimelinePoint,
    TrackResult,
)
from .orchestration import LoadTestReport

REPORT_VERSION = 1


# --- JSON --------------------------------------------------------------------


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 4) if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_rounded(v) for v in value]
    return value


def to_dict(report: LoadTestReport) -> dict[str, Any]:
    """The JSON document (``--json``): stable keys, floats rounded to 4 places."""
    rooms = []
    for room in report.rooms:
        peers = []
        for peer in room.peers:
            entry = asdict(peer)
            entry["missing"] = [f"{t.source}/{t.kind}" for t in peer.missing]
            peers.append(entry)
        rooms.append(
            {"index": room.index, "call_id": room.call_id, "error": room.error, "peers": peers}
        )
    summary = asdict(report.summary)
    summary["server_rss_after_leave_bytes"] = report.server_rss_after_leave_bytes
    document = {
        "version": REPORT_VERSION,
        "tool": "huddle loadtest",
        "passed": report.passed,
        "started_at": report.started_at,
        "config": report.config,
        "phases": {
            "ramp_s": report.ramp_s,
            "settle_s": report.settle_s,
            "steady_s": report.steady_s,
            "leave_s": report.leave_s,
        },
        "summary": summary,
        "checks": [asdict(c) for c in report.checks],
        "warnings": report.warnings,
        "rooms": rooms,
        "timeline": [asdict(p) for p in report.timeline],
    }
    result: dict[str, Any] = _rounded(document)
    return result


def to_json(report: LoadTestReport) -> str:
    return json.dumps(to_dict(report), indent=2) + "\n"


# --- text --------------------------------------------------------------------


def _fmt(value: float | None, scale: float = 1.0, digits: int = 1) -> str:
    if value is None:
        return "-"
    return f"{value * scale:,.{digits}f}"


def _row(label: str, dist: Distribution | None, scale: float = 1.0, digits: int = 1) -> str:
    if dist is None:
        return f"{label:<24}{'0':>5}" + "".join(f"{'-':>9}" for _ in range(6))
    values = (dist.min, dist.p50, dist.p95, dist.p99, dist.max, dist.mean)
    cells = "".join(f"{_fmt(v, scale, digits):>9}" for v in values)
    return f"{label:<24}{dist.n:>5}{cells}"


def scenario_line(report: LoadTestReport) -> str:
    c = report.config
    media = (
        "audio only"
        if c["audio_only"]
        else (
            f"VP8 {'simulcast q/h/f up to ' if c.get('simulcast') else ''}"
            f"{c['video_width']}x{c['video_height']}@{c['video_fps']} "
            f"{c['video_bitrate'] / 1000:.0f} kbit/s + Opus"
        )
    )
    return (
        f"{_plural(c['rooms'], 'room')} x ({_plural(c['publishers'], 'publisher')} + "
        f"{_plural(c['subscribers'], 'subscriber')}), {media}, against {c['url']}"
        + (" (light receivers: header counting, no NACK/PLI)" if c.get("light_receivers") else "")
        + (
            f", subscribers capped at {c['subscriber_cap_bps'] / 1000:.0f} kbit/s"
            if c.get("subscriber_cap_bps")
            else ""
        )
    )


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def summary_text(report: LoadTestReport, *, max_listed: int = 10) -> str:
    """The human summary printed at the end of a run."""
    s = report.summary
    lines = [
        f"huddle loadtest: {'PASSED' if report.passed else 'FAILED'}",
        scenario_line(report),
        f"phases: ramp {report.ramp_s:.1f} s, settle {report.settle_s:.1f} s, "
        f"steady {report.steady_s:.1f} s (rates below), leave {report.leave_s:.1f} s",
        "",
        f"peers    {s.peers_joined}/{s.peers_planned} joined, {s.peers_connected} connected, "
        f"{s.peers_failed} failed",
        f"tracks   {s.tracks_receiving}/{s.tracks_expected} receiving, {s.tracks_missing} missing",
        "",
        f"{'':<24}{'n':>5}{'min':>9}{'p50':>9}{'p95':>9}{'p99':>9}{'max':>9}{'mean':>9}",
        _row("join latency (ms)", s.join_latency_s, 1000, 0),
        _row("first frame (ms)", s.first_frame_s, 1000, 0),
        _row("video fps / track", s.video_fps),
        _row("video kbit/s / track", s.video_bitrate_bps, 1 / 1000, 0),
        _row("audio kbit/s / track", s.audio_bitrate_bps, 1 / 1000, 1),
        _row("server CPU %", s.server_cpu_pct, 1, 0),
        _row("server RSS MiB", s.server_rss_bytes, 1 / 2**20, 0),
        _row("load generator CPU %", s.loadgen_cpu_pct, 1, 0),
        "",
        f"packet loss   {_fmt(s.loss_pct, digits=2)}% ({s.packets_lost:,} of "
        f"{s.packets_received + s.packets_lost:,} media packets; worst track "
        f"{_fmt(s.worst_track_loss_pct, digits=2)}%), {s.retransmitted:,} retransmissions",
        f"freezes       {s.freezes} gaps over {FREEZE_THRESHOLD_S * 1000:.0f} ms "
        f"on {s.tracks_with_freezes} track(s)",
        f"keyframes     {s.keyframes_received} received; {s.plis_sent} PLIs sent by receivers",
        f"received      {s.received_bitrate_bps / 1e6:.2f} Mbit/s in all",
    ]
    if report.config.get("simulcast"):
        lines += _layer_lines(report, max_listed)
    if report.server_rss_after_leave_bytes is not None:
        lines.append(
            f"server RSS    {report.server_rss_after_leave_bytes / 2**20:.0f} MiB after leave"
        )
    lines += ["", "checks"]
    for c in report.checks:
        op = ">=" if c.name.startswith("min") else "<="
        lines.append(
            f"  {'ok  ' if c.ok else 'FAIL'}  {c.name:<20} "
            f"{_fmt(c.value, digits=2):>8} {op} {c.limit:g}"
        )
    if not report.checks:
        lines.append("  (none)")
    problems = _problems(report.peers)
    if problems:
        lines += ["", f"problems ({len(problems)})"]
        lines += [f"  {p}" for p in problems[:max_listed]]
        if len(problems) > max_listed:
            lines.append(f"  ... {len(problems) - max_listed} more in the JSON report")
    if report.warnings:
        lines += ["", "warnings"] + [f"  {w}" for w in report.warnings]
    return "\n".join(lines)


def layer_history(track: TrackResult) -> str:
    """``q@2.1s f@2.3s h@14.0s``: the layer received from each time on (run seconds)."""
    return " ".join(f"{c.layer}@{c.at_s:.1f}s" for c in track.layers) or "-"


def _capped(peer: PeerResult) -> str:
    if peer.receive_cap_bps is None:
        return ""
    return f" (capped {peer.receive_cap_bps / 1000:.0f} kbit/s, {peer.cap_dropped_packets} dropped)"


def layer_times(track: TrackResult) -> str:
    """``f 12.0 s, h 3.1 s``: seconds on each layer."""
    return ", ".join(f"{layer} {s:.1f} s" for layer, s in track.layer_time_s.items()) or "-"


def _layer_lines(report: LoadTestReport, max_listed: int) -> list[str]:
    s = report.summary
    on = ", ".join(f"{layer} {n}" for layer, n in s.video_layers.items()) or "none"
    lines = [
        f"layers        video tracks at the end: {on}; {s.layer_switches} layer switches; "
        f"{s.long_freezes} freezes over {LONG_FREEZE_S * 1000:.0f} ms; {s.pauses} pauses",
    ]
    names = {p.user_id: p.name for p in report.peers}
    rows = [
        f"  {peer.name}{_capped(peer)} <- {names.get(t.source, t.source)}: {t.layer or '-'}, "
        f"{t.layer_switches} switches, {t.long_freezes} long freezes, max gap "
        f"{t.max_gap_s:.2f} s, SFU sends {t.sfu_layer or '-'}, {t.pauses} pauses "
        f"({t.paused_s:.1f} s); {layer_history(t)}"
        for peer in report.peers
        for t in peer.tracks
        if t.kind == "video"
    ]
    lines += rows[:max_listed]
    if len(rows) > max_listed:
        lines.append(f"  ... {len(rows) - max_listed} more in the JSON report")
    return lines


def _problems(peers: Sequence[PeerResult]) -> list[str]:
    names = {p.user_id: p.name for p in peers}
    out = []
    for peer in peers:
        for failure in peer.failures:
            out.append(f"{peer.name}: {failure}")
        for track in peer.missing:
            source = names.get(track.source, track.source)
            state = "announced, 0 frames" if track.announced else "never announced"
            out.append(f"{peer.name} <- {source} {track.kind}: {state}")
    return out


def progress_line(point: TimelinePoint) -> str:
    """The live status line."""
    fps = "-" if point.video_fps is None else f"{point.video_fps:4.1f}"
    loss = "-" if point.loss_pct is None else f"{point.loss_pct:.2f}%"
    cpu = "-" if point.server_cpu_pct is None else f"{point.server_cpu_pct:.0f}%"
    return (
        f"[{point.t:6.1f}s {point.phase:<6}] peers {point.peers_connected}/{point.peers_planned}"
        f"  video {fps} fps/track  {point.bitrate_bps / 1e6:6.2f} Mbit/s  loss {loss}"
        f"  server CPU {cpu}  errors {point.errors}"
    )


# --- HTML --------------------------------------------------------------------

_PALETTE = ("#2563eb", "#dc2626", "#059669", "#d97706", "#7c3aed")


def _nice_step(span: float, ticks: int = 5) -> float:
    if span <= 0:
        return 1.0
    raw = span / ticks
    magnitude: float = 10.0 ** math.floor(math.log10(raw))
    for m in (1, 2, 2.5, 5, 10):
        if raw <= m * magnitude:
            return m * magnitude
    return 10 * magnitude


def _tick_label(value: float) -> str:
    if abs(value) >= 100 or value == int(value):
        return f"{value:,.0f}"
    return f"{value:.2g}" if abs(value) < 1 else f"{value:.1f}"


def line_chart(
    title: str,
    xs: Sequence[float],
    series: Sequence[tuple[str, Sequence[float | None]]],
    *,
    unit: str = "",
    shaded: Sequence[tuple[float, float, str]] = (),
    threshold: tuple[float, str] | None = None,
    y_floor: float | None = None,
    width: int = 520,
    height: int = 240,
) -> str:
    """An SVG line chart: x in seconds, one polyline per series (None = gap)."""
    left, right, top, bottom = 52, 14, 34, 34
    pw, ph = width - left - right, height - top - bottom
    values = [v for _, ys in series for v in ys if v is not None]
    if threshold is not None:
        values.append(threshold[0])
    x_max = max(xs) if xs else 1.0
    x_max = x_max if x_max > 0 else 1.0
    y_max = max(values) if values else 1.0
    y_min = min(values) if values else 0.0
    if y_floor is not None:
        y_min = min(y_min, y_floor)
    if y_max <= y_min:
        y_max = y_min + 1.0
    step = _nice_step(y_max - y_min)
    y_min = math.floor(y_min / step) * step
    y_max = math.ceil(y_max * 1.05 / step) * step

    def px(x: float) -> float:
        return left + pw * x / x_max

    def py(y: float) -> float:
        return top + ph * (1 - (y - y_min) / (y_max - y_min))

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" role="img" aria-label="{html.escape(title)}">',
        f'<text x="{left}" y="20" class="t">{html.escape(title)}</text>',
    ]
    for row, (start, end, label) in enumerate(shaded):
        x0, x1 = px(max(0.0, start)), px(min(x_max, end))
        if x1 > x0:
            out.append(
                f'<rect x="{x0:.1f}" y="{top}" width="{x1 - x0:.1f}" height="{ph}" '
                f'class="sh{row % 2}"/><text x="{x0 + 3:.1f}" y="{top + 12 + 12 * (row % 2)}" '
                f'class="sl">{html.escape(label)}</text>'
            )
    y = y_min
    for _ in range(40):  # bounded: a nice step gives at most ~12 lines
        if y > y_max + step / 2:
            break
        out.append(
            f'<line x1="{left}" x2="{left + pw}" y1="{py(y):.1f}" y2="{py(y):.1f}" class="g"/>'
            f'<text x="{left - 6}" y="{py(y) + 4:.1f}" class="yl">{_tick_label(y)}</text>'
        )
        y += step
    x_step = _nice_step(x_max, 6)
    x = 0.0
    for _ in range(40):
        if x > x_max + 1e-9:
            break
        out.append(
            f'<line x1="{px(x):.1f}" x2="{px(x):.1f}" y1="{top + ph}" '
            f'y2="{top + ph + 4}" class="a"/>'
            f'<text x="{px(x):.1f}" y="{top + ph + 16}" class="xl">{_tick_label(x)}</text>'
        )
        x += x_step
    out.append(f'<text x="{left + pw}" y="{height - 4}" class="xu">seconds</text>')
    if unit:
        out.append(f'<text x="8" y="{top - 6}" class="yu">{html.escape(unit)}</text>')
    out.append(
        f'<line x1="{left}" x2="{left}" y1="{top}" y2="{top + ph}" class="a"/>'
        f'<line x1="{left}" x2="{left + pw}" y1="{top + ph}" y2="{top + ph}" class="a"/>'
    )
    if threshold is not None:
        ty = py(threshold[0])
        out.append(
            f'<line x1="{left}" x2="{left + pw}" y1="{ty:.1f}" y2="{ty:.1f}" class="th"/>'
            f'<text x="{left + pw - 4}" y="{ty - 4:.1f}" class="tl">'
            f"{html.escape(threshold[1])}</text>"
        )
    legend_x = left + pw - sum(22 + 7 * len(label) for label, _ in series)
    for index, (label, ys) in enumerate(series):
        color = _PALETTE[index % len(_PALETTE)]
        runs: list[list[str]] = [[]]
        for xv, yv in zip(xs, ys, strict=False):
            if yv is None:
                if runs[-1]:
                    runs.append([])
                continue
            runs[-1].append(f"{px(xv):.1f},{py(yv):.1f}")
        for run in runs:
            if len(run) == 1:
                cx, cy = run[0].split(",")
                out.append(f'<circle cx="{cx}" cy="{cy}" r="2.5" fill="{color}"/>')
            elif run:
                out.append(
                    f'<polyline points="{" ".join(run)}" fill="none" stroke="{color}" '
                    f'stroke-width="2" stroke-linejoin="round"/>'
                )
        out.append(
            f'<rect x="{legend_x:.0f}" y="11" width="10" height="10" fill="{color}" rx="2"/>'
            f'<text x="{legend_x + 14:.0f}" y="20" class="lg">{html.escape(label)}</text>'
        )
        legend_x += 22 + 7 * len(label)
    out.append("</svg>")
    return "".join(out)


def _color_for(fps: float, target: float) -> str:
    if fps <= 0:
        return "#dc2626"
    ratio = min(1.0, fps / target) if target > 0 else 1.0
    if ratio >= 0.9:
        return "#059669"
    if ratio >= 0.6:
        return "#d97706"
    return "#ea580c"


def reception_matrix(report: LoadTestReport, room_index: int) -> str:
    """Who received whom in one room: a cell per (receiver, publisher)."""
    room = report.rooms[room_index]
    kind = "audio" if report.config["audio_only"] else "video"
    target = 50.0 if kind == "audio" else float(report.config["video_fps"])
    publishers = [p for p in room.peers if p.role == "publisher"]
    cell, label_w, head_h = 46, 74, 30
    width = label_w + cell * max(1, len(publishers)) + 10
    height = head_h + cell * len(room.peers) + 8
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" role="img" aria-label="room {room.index}">'
    ]
    for j, pub in enumerate(publishers):
        x = label_w + cell * j + cell / 2
        out.append(f'<text x="{x:.0f}" y="{head_h - 10}" class="ml">{html.escape(pub.name)}</text>')
    for i, peer in enumerate(room.peers):
        y = head_h + cell * i
        out.append(
            f'<text x="{label_w - 6}" y="{y + cell / 2 + 4:.0f}" class="mr">'
            f"{html.escape(peer.name)}</text>"
        )
        by_source = {t.source: t for t in peer.tracks if t.kind == kind}
        for j, pub in enumerate(publishers):
            x = label_w + cell * j
            if pub.user_id == peer.user_id:
                out.append(
                    f'<rect x="{x + 2}" y="{y + 2}" width="{cell - 4}" height="{cell - 4}" '
                    f'fill="#f3f4f6" rx="4"/>'
                )
                continue
            track = by_source.get(pub.user_id)
            fps = track.fps if track else 0.0
            text = f"{fps:.0f}" if track and track.receiving else "0"
            tip = f"{peer.name} <- {pub.name} {kind}: " + (
                f"{fps:.1f} fps, {track.freezes} freezes" if track else "not received"
            )
            out.append(
                f'<rect x="{x + 2}" y="{y + 2}" width="{cell - 4}" height="{cell - 4}" '
                f'fill="{_color_for(fps, target)}" rx="4"><title>{html.escape(tip)}</title></rect>'
                f'<text x="{x + cell / 2:.0f}" y="{y + cell / 2 + 5:.0f}" class="mv">{text}</text>'
            )
    out.append("</svg>")
    return "".join(out)


_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,sans-serif;margin:24px;color:#111827;
background:#f9fafb}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 10px}
.sub{color:#4b5563;margin:0 0 16px}
.badge{display:inline-block;padding:3px 12px;border-radius:999px;color:#fff;font-weight:600;
margin-left:10px;font-size:15px;vertical-align:middle}
.pass{background:#059669}.fail{background:#dc2626}
.cards{display:flex;flex-wrap:wrap;gap:10px}
.card{background:#fff;border:1px solid #e5e7eb;border-radius:10px;padding:10px 14px;
min-width:130px}
.card .v{font-size:22px;font-weight:650}.card .k{color:#6b7280;font-size:12px}
.charts{display:grid;grid-template-columns:repeat(auto-fill,minmax(520px,1fr));gap:12px}
.chart,.matrix{background:#fff;border:1px solid #e5e7eb;border-radius:10px;padding:6px}
.matrices{display:flex;flex-wrap:wrap;gap:12px}
.matrix h3{font-size:13px;margin:4px 8px}
table{border-collapse:collapse;background:#fff;font-size:13px}
td,th{border:1px solid #e5e7eb;padding:4px 8px;text-align:right}
th{background:#f3f4f6}td.l,th.l{text-align:left}
.ok{color:#059669;font-weight:600}.bad{color:#dc2626;font-weight:600}
ul.w li{color:#92400e}
svg text{font-family:system-ui,sans-serif}
.t{font-size:14px;font-weight:600;fill:#111827}
.g{stroke:#e5e7eb}.a{stroke:#9ca3af}
.yl{font-size:11px;fill:#4b5563;text-anchor:end}.xl{font-size:11px;fill:#4b5563;text-anchor:middle}
.xu,.yu{font-size:10px;fill:#6b7280}.xu{text-anchor:end}
.sh0{fill:#eef2f7}.sh1{fill:#f5f6f8}.sl{font-size:10px;fill:#6b7280}
.th{stroke:#dc2626;stroke-dasharray:5 4}.tl{font-size:10px;fill:#dc2626;text-anchor:end}
.lg{font-size:11px;fill:#374151}
.ml{font-size:11px;fill:#374151;text-anchor:middle}.mr{font-size:11px;fill:#374151;
text-anchor:end}.mv{font-size:12px;fill:#fff;font-weight:600;text-anchor:middle}
"""


def _card(value: str, key: str) -> str:
    return (
        f'<div class="card"><div class="v">{html.escape(value)}</div>'
        f'<div class="k">{html.escape(key)}</div></div>'
    )


def to_html(report: LoadTestReport) -> str:
    """The self-contained HTML report."""
    s = report.summary
    c = report.config
    timeline = report.timeline
    xs = [p.t for p in timeline]
    ramp_end = report.ramp_s
    settle_end = report.ramp_s + report.settle_s
    shaded = [(0.0, ramp_end, "ramp"), (ramp_end, settle_end, "settle")]
    min_fps = c["thresholds"].get("min_fps")
    charts = [
        line_chart(
            "Peers connected",
            xs,
            [
                ("connected", [float(p.peers_connected) for p in timeline]),
                ("errors", [float(p.errors) for p in timeline]),
            ],
            unit="peers",
            shaded=shaded,
            threshold=(float(timeline[0].peers_planned), "planned") if timeline else None,
            y_floor=0,
        ),
        line_chart(
            "Received video frame rate per track",
            xs,
            [
                ("mean", [p.video_fps for p in timeline]),
                ("worst track", [p.video_fps_min for p in timeline]),
            ],
            unit="fps",
            shaded=shaded,
            threshold=(float(min_fps), f"min {min_fps:g}") if min_fps else None,
            y_floor=0,
        ),
        line_chart(
            "Received bitrate, all peers",
            xs,
            [("received", [p.bitrate_bps / 1e6 for p in timeline])],
            unit="Mbit/s",
            shaded=shaded,
            y_floor=0,
        ),
        line_chart(
            "Packet loss (media packets, before repair)",
            xs,
            [("loss", [p.loss_pct for p in timeline])],
            unit="%",
            shaded=shaded,
            y_floor=0,
        ),
        line_chart(
            "CPU (100% = one core)",
            xs,
            [
                ("server", [p.server_cpu_pct for p in timeline]),
                ("load generator", [p.loadgen_cpu_pct for p in timeline]),
            ],
            unit="%",
            shaded=shaded,
            y_floor=0,
        ),
        line_chart(
            "Server resident memory",
            xs,
            [
                (
                    "RSS",
                    [p.server_rss_bytes / 2**20 if p.server_rss_bytes else None for p in timeline],
                )
            ],
            unit="MiB",
            shaded=shaded,
            y_floor=0,
        ),
    ]
    fps = s.video_fps
    cards = [
        _card(f"{s.peers_connected}/{s.peers_planned}", "peers connected"),
        _card(f"{s.tracks_receiving}/{s.tracks_expected}", "tracks receiving"),
        _card(f"{fps.p50:.1f}" if fps else "-", "video fps / track, median"),
        _card(f"{fps.min:.1f}" if fps else "-", "video fps, worst track"),
        _card(f"{_fmt(s.loss_pct, digits=2)}%", "packet loss"),
        _card(str(s.freezes), f"freezes (> {FREEZE_THRESHOLD_S * 1000:.0f} ms)"),
        _card(
            f"{s.join_latency_s.p95 * 1000:.0f} ms" if s.join_latency_s else "-",
            "join → connected, p95",
        ),
        _card(
            f"{s.first_frame_s.p95 * 1000:.0f} ms" if s.first_frame_s else "-",
            "first frame, p95",
        ),
        _card(f"{s.server_cpu_pct.mean:.0f}%" if s.server_cpu_pct else "-", "server CPU, mean"),
        _card(
            f"{s.server_rss_bytes.max / 2**20:.0f} MiB" if s.server_rss_bytes else "-",
            "server RSS, max",
        ),
    ]
    checks = "".join(
        f'<tr><td class="l {"ok" if ch.ok else "bad"}">{"ok" if ch.ok else "FAIL"}</td>'
        f'<td class="l">{html.escape(ch.name)}</td><td>{_fmt(ch.value, digits=2)}</td>'
        f"<td>{'≥' if ch.name.startswith('min') else '≤'} {ch.limit:g}</td>"
        f'<td class="l">{html.escape(ch.detail)}</td></tr>'
        for ch in report.checks
    )
    matrices = "".join(
        f'<div class="matrix"><h3>room {room.index} · '
        f"{'audio' if c['audio_only'] else 'video'} fps received (row ← column)</h3>"
        f"{reception_matrix(report, i)}</div>"
        for i, room in enumerate(report.rooms)
    )
    peers = "".join(
        f'<tr><td class="l">{html.escape(p.name)}</td><td class="l">{p.role}</td>'
        f"<td>{_fmt(p.join_latency_s, 1000, 0)}</td>"
        f"<td>{sum(t.receiving for t in p.tracks)}/{len(p.tracks)}</td>"
        f"<td>{_fmt(_mean([t.fps for t in p.tracks if t.kind == 'video']))}</td>"
        f"<td>{sum(t.freezes for t in p.tracks)}</td>"
        f"<td>{sum(t.packets_lost for t in p.tracks)}</td>"
        f"<td>{p.plis_sent}</td>"
        f'<td class="l">{html.escape("; ".join(p.failures))}</td></tr>'
        for p in report.peers
    )
    names = {p.user_id: p.name for p in report.peers}
    layer_rows = "".join(
        f'<tr><td class="l">{html.escape(p.name + _capped(p))}</td>'
        f'<td class="l">{html.escape(names.get(t.source, t.source))}</td>'
        f'<td class="l">{html.escape(t.layer or "-")}</td><td>{t.layer_switches}</td>'
        f"<td>{t.long_freezes}</td><td>{t.max_gap_s:.2f}</td>"
        f'<td class="l">{html.escape(t.sfu_layer or "-")}</td>'
        f"<td>{t.pauses} ({t.paused_s:.1f} s)</td>"
        f'<td class="l">{html.escape(layer_times(t))}</td>'
        f'<td class="l">{html.escape(layer_history(t))}</td></tr>'
        for p in report.peers
        for t in p.tracks
        if t.kind == "video"
    )
    layers_html = (
        f"<h2>Simulcast layers received</h2><table><tr><th class='l'>receiver</th>"
        f"<th class='l'>from</th><th class='l'>layer at the end</th><th>switches</th>"
        f"<th>freezes &gt; {LONG_FREEZE_S:g} s</th><th>max gap s</th>"
        f"<th class='l'>SFU sends</th><th>pauses</th>"
        f"<th class='l'>time on each layer</th><th class='l'>layer from (run time)</th></tr>"
        f"{layer_rows}</table>"
        if c.get("simulcast")
        else ""
    )
    chart_divs = "".join(f'<div class="chart">{ch}</div>' for ch in charts)
    problems = _problems(report.peers)
    notes = "".join(f"<li>{html.escape(w)}</li>" for w in report.warnings + problems[:50])
    badge = (
        '<span class="badge pass">PASSED</span>'
        if report.passed
        else ('<span class="badge fail">FAILED</span>')
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>huddle loadtest {html.escape(report.started_at)}</title>
<style>{_CSS}</style></head><body>
<h1>huddle loadtest{badge}</h1>
<p class="sub">{html.escape(scenario_line(report))}<br>started {html.escape(report.started_at)} ·
ramp {report.ramp_s:.1f} s · settle {report.settle_s:.1f} s · steady {report.steady_s:.1f} s
(rates measured here) · leave {report.leave_s:.1f} s</p>
<div class="cards">{"".join(cards)}</div>
<h2>Over time</h2><div class="charts">{chart_divs}</div>
<h2>Who received whom</h2><div class="matrices">{matrices}</div>
{layers_html}
<h2>Checks</h2><table><tr><th class="l"></th><th class="l">check</th><th>value</th>
<th>limit</th><th class="l">what</th></tr>{checks}</table>
{f'<h2>Warnings and problems</h2><ul class="w">{notes}</ul>' if notes else ""}
<h2>Peers</h2><table><tr><th class="l">peer</th><th class="l">role</th><th>join ms</th>
<th>tracks</th><th>video fps</th><th>freezes</th><th>lost pkts</th><th>PLIs</th>
<th class="l">failures</th></tr>{peers}</table>
</body></html>
"""


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None
