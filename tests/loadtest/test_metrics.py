"""Pure parts of the load tester: statistics, scraping, rates, charts."""

from __future__ import annotations

import pytest

from media.loadtest.metrics import (
    ServerSample,
    Thresholds,
    TrackTotals,
    check,
    distribution,
    interval_point,
    parse_process_metrics,
    percentile,
    summarize,
)
from media.loadtest.peers import PacketCounts
from media.loadtest.report import line_chart


def test_percentiles_interpolate() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == pytest.approx(50.5)
    assert percentile(values, 99) == pytest.approx(99.01)
    dist = distribution([3.0, None, 1.0, 2.0])
    assert dist is not None
    assert (dist.n, dist.min, dist.p50, dist.max, dist.mean) == (3, 1.0, 2.0, 3.0, 2.0)
    assert distribution([None]) is None


def test_process_metrics_from_a_scrape() -> None:
    text = (
        "# HELP process_cpu_seconds_total Total user and system CPU time spent in seconds.\n"
        "# TYPE process_cpu_seconds_total counter\n"
        "process_cpu_seconds_total 12.5\n"
        "# HELP process_resident_memory_bytes Resident memory size in bytes.\n"
        "# TYPE process_resident_memory_bytes gauge\n"
        "process_resident_memory_bytes 1.048576e+08\n"
    )
    assert parse_process_metrics(text) == (12.5, 104857600.0)
    assert parse_process_metrics("") == (None, None)


def test_process_metrics_of_a_server_with_workers_add_theirs() -> None:
    text = (
        "# TYPE process_cpu_seconds_total counter\n"
        "process_cpu_seconds_total 1.5\n"
        "# TYPE huddle_worker_process_cpu_seconds_total counter\n"
        'huddle_worker_process_cpu_seconds_total{worker="0"} 2.0\n'
        'huddle_worker_process_cpu_seconds_total{worker="1"} 3.0\n'
        "# TYPE huddle_worker_process_resident_memory_bytes gauge\n"
        'huddle_worker_process_resident_memory_bytes{worker="0"} 1000.0\n'
    )
    assert parse_process_metrics(text) == (6.5, 1000.0)


def test_interval_rates_and_loss() -> None:
    key_v, key_a = ("sub", "pub", "video"), ("sub", "pub", "audio")
    before = {
        key_v: TrackTotals(100, 10_000, PacketCounts(200, 0)),
        key_a: TrackTotals(50, 4_000, PacketCounts(50, 0)),
    }
    after = {
        key_v: TrackTotals(130, 47_500, PacketCounts(290, 10, 3)),
        key_a: TrackTotals(100, 8_000, PacketCounts(100, 0)),
    }
    point = interval_point(
        t=5.0,
        dt=1.0,
        phase="steady",
        before=before,
        after=after,
        peers_planned=2,
        peers_connected=2,
        server_before=ServerSample(0.0, 10.0, 1e8),
        server_after=ServerSample(2.0, 11.0, 2e8),
        loadgen_cpu_s=0.25,
        errors=0,
    )
    assert point.video_fps == 30 and point.video_fps_min == 30
    assert point.bitrate_bps == (37_500 + 4_000) * 8
    assert point.loss_pct == pytest.approx(100 * 10 / 150)  # 10 lost of 150 expected
    assert point.server_cpu_pct == pytest.approx(50.0)
    assert point.loadgen_cpu_pct == pytest.approx(25.0)


def test_unmeasured_values_fail_their_checks() -> None:
    summary = summarize([], [])
    results = {c.name: c for c in check(Thresholds(max_join_p95_s=1.0), summary, [])}
    assert results["missing tracks"].ok
    assert not results["packet loss %"].ok  # no packets at all is not "no loss"
    assert not results["join p95 s"].ok


def test_line_chart_is_plain_svg() -> None:
    svg = line_chart(
        "fps",
        [1.0, 2.0, 3.0],
        [("mean", [30.0, None, 29.0]), ("worst", [0.0, 1.0, 2.0])],
        shaded=[(0.0, 1.5, "ramp")],
        threshold=(15.0, "min 15"),
    )
    assert svg.startswith("<svg") and svg.endswith("</svg>")
    assert svg.count("<circle") == 2  # the lone points either side of the gap
    assert "min 15" in svg and "ramp" in svg
