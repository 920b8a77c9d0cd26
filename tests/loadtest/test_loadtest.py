"""``huddle loadtest`` against a real server process: 2 rooms x 3 peers, a few seconds."""

from __future__ import annotations

import asyncio
import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support.serve import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


async def run_cli(*args: str, timeout: float = 180) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "server.cli",
        "--log-level",
        "WARNING",
        "loadtest",
        *args,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout=timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def by_name(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {p["name"]: p for room in report["rooms"] for p in room["peers"]}


async def test_two_rooms_of_three_peers(huddle_server: str, tmp_path: Path) -> None:
    json_path, html_path = tmp_path / "report.json", tmp_path / "report.html"
    code, out, err = await run_cli(
        "--url", huddle_server,
        "--rooms", "2",
        "--publishers", "2",
        "--subscribers", "1",
        "--duration", "4",
        "--ramp", "6",  # each room's joins 1/3 s apart: offers with several tracks
        "--settle", "15",
        # The machine is shared with other suites: fps is checked loosely here.
        "--min-fps", "5",
        "--max-loss", "1",
        "--json", str(json_path),
        "--html", str(html_path),
    )  # fmt: skip
    report = json.loads(json_path.read_text())
    assert code == 0, f"exit {code}\n{out}\n{err[-3000:]}"
    assert "huddle loadtest: PASSED" in out
    assert report["passed"] is True
    assert all(check["ok"] for check in report["checks"])

    peers = by_name(report)
    assert sorted(peers) == ["r0-p0", "r0-p1", "r0-s0", "r1-p0", "r1-p1", "r1-s0"]
    assert len({room["call_id"] for room in report["rooms"]}) == 2
    for room in report["rooms"]:
        publishers = {p["user_id"] for p in room["peers"] if p["role"] == "publisher"}
        for peer in room["peers"]:
            assert peer["joined"] and not peer["failures"], peer
            assert 0 < peer["join_latency_s"] < 15
            # Everyone receives audio and video from every other publisher of its room.
            wanted = {
                (pub, kind) for pub in publishers - {peer["user_id"]} for kind in ("audio", "video")
            }
            assert {(t["source"], t["kind"]) for t in peer["tracks"]} == wanted
            assert peer["missing"] == []
            for track in peer["tracks"]:
                assert track["frames"] > 20, track
                assert track["bytes"] > 1000, track
                assert 0 < track["first_frame_s"] < 10, track
                assert track["packets_received"] > 0
                assert track["loss_pct"] is not None and track["loss_pct"] <= 1.0, track
                if track["kind"] == "video":
                    assert track["keyframes"] >= 1, track
                    assert 5 <= track["fps"] <= 40, track
                    assert 50_000 < track["bitrate_bps"] < 1_000_000, track
                else:
                    assert 30 <= track["fps"] <= 60, track  # 20 ms Opus frames

    s = report["summary"]
    assert s["peers_planned"] == s["peers_joined"] == s["peers_connected"] == 6
    assert s["tracks_expected"] == s["tracks_receiving"] == 16  # 4 per publisher, 4 per subscriber
    assert s["tracks_missing"] == 0 and s["peers_failed"] == 0
    assert s["loss_pct"] is not None and s["loss_pct"] <= 1.0
    for key in ("join_latency_s", "first_frame_s", "video_fps", "video_bitrate_bps"):
        dist = s[key]
        assert dist["min"] <= dist["p50"] <= dist["p95"] <= dist["p99"] <= dist["max"], key
    assert s["join_latency_s"]["n"] == 6 and s["first_frame_s"]["n"] == 16
    assert s["video_fps"]["n"] == 8
    assert 0 < s["server_cpu_pct"]["mean"] < 400
    assert 10 * 2**20 < s["server_rss_bytes"]["max"] < 4 * 2**30
    assert report["phases"]["steady_s"] >= 4

    timeline = report["timeline"]
    assert len(timeline) >= 4
    assert [p["t"] for p in timeline] == sorted(p["t"] for p in timeline)
    steady = [p for p in timeline if p["phase"] == "steady"]
    assert steady and all(p["peers_connected"] == 6 for p in steady)
    assert all(p["video_fps"] is not None and p["video_fps"] > 0 for p in steady)
    assert any(p["server_cpu_pct"] is not None for p in steady)

    # The HTML report: charts as inline SVG, nothing to fetch.
    page = html_path.read_text()
    assert page.count("<svg") >= 8  # 6 charts + one matrix per room
    assert "<script" not in page
    assert not re.search(r"""(src|href)\s*=""", page)


async def test_light_receivers_count_every_track(huddle_server: str, tmp_path: Path) -> None:
    """--light-receivers: header counting instead of aiortc's receive path."""
    json_path = tmp_path / "light.json"
    code, out, err = await run_cli(
        "--url", huddle_server,
        "--rooms", "1",
        "--publishers", "2",
        "--subscribers", "1",
        "--duration", "3",
        "--settle", "15",
        "--min-fps", "5",
        "--max-loss", "1",
        "--light-receivers",
        "--json", str(json_path),
    )  # fmt: skip
    report = json.loads(json_path.read_text())
    assert code == 0, f"exit {code}\n{out}\n{err[-3000:]}"
    assert "light receivers" in out
    assert report["config"]["light_receivers"] is True
    s = report["summary"]
    assert s["tracks_expected"] == s["tracks_receiving"] == 8
    for peer in by_name(report).values():
        for track in peer["tracks"]:
            assert track["frames"] > 20 and track["packets_received"] > 0, track
            assert track["loss_pct"] is not None and track["loss_pct"] <= 1.0, track
            if track["kind"] == "video":
                assert track["keyframes"] >= 1, track


async def test_simulcast_publishers_report_the_layer_received(
    huddle_server: str, tmp_path: Path
) -> None:
    """--simulcast: three layers per publisher; every uncapped receiver ends on the
    top one. --subscriber-cap: the subscriber's downlink is policed, and the SFU
    moves it down to a layer that fits."""
    json_path, html_path = tmp_path / "simulcast.json", tmp_path / "simulcast.html"
    code, out, err = await run_cli(
        "--url", huddle_server,
        "--rooms", "1",
        "--publishers", "2",
        "--subscribers", "1",
        "--duration", "4",
        "--settle", "8",
        "--simulcast",
        "--video-size", "320x180",
        "--video-fps", "15",
        "--subscriber-cap", "150k",
        # The capped subscriber loses what does not fit: only checked below.
        "--min-fps", "0",
        "--max-loss", "100",
        "--max-missing", "2",
        "--json", str(json_path),
        "--html", str(html_path),
    )  # fmt: skip
    assert json_path.exists(), f"exit {code}\n{out}\n{err[-3000:]}"
    report = json.loads(json_path.read_text())
    assert code == 0, f"exit {code}\n{out}\n{err[-3000:]}"
    assert report["config"]["simulcast"] is True
    assert "simulcast q/h/f" in out and "subscribers capped at 150 kbit/s" in out
    assert re.search(r"layers +video tracks at the end: .*f [2-4]\b.*; \d+ layer switches", out)
    peers = by_name(report)
    subscriber = peers.pop("r0-s0")
    assert subscriber["receive_cap_bps"] == 150_000
    assert subscriber["cap_dropped_packets"] > 0
    assert re.search(r"r0-s0 \(capped 150 kbit/s, [1-9]\d* dropped\) <- r0-p0", out), out
    # The SFU reads the capped subscriber's loss (its receiver reports) and
    # moves it to a layer that fits.
    # (What it received last may still be a top-layer keyframe: the lower
    # layer's keyframe can be dropped by the cap too; the SFU says what it sends.)
    for track in subscriber["tracks"]:
        if track["kind"] == "video":
            assert track["sfu_layer"] in ("q", "h") or track["pauses"] > 0, track
    assert len(peers) == 2
    for peer in peers.values():
        assert peer["receive_cap_bps"] is None and peer["cap_dropped_packets"] == 0
        for track in peer["tracks"]:
            assert track["frames"] > 20 and track["loss_pct"] == 0, track
            if track["kind"] != "video":
                continue
            assert track["layer"] == "f", track
            assert track["layers"][-1]["layer"] == "f"
            assert (track["layers"][-1]["width"], track["layers"][-1]["height"]) == (320, 180)
            assert track["layer_switches"] == len(track["layers"]) - 1
            assert track["layer_time_s"]["f"] > 3, track
            assert track["long_freezes"] == 0, track
            assert track["sfu_layer"] == "f" and track["pauses"] == 0, track
    page = html_path.read_text()
    assert "Simulcast layers received" in page and "capped 150 kbit/s" in page


async def test_bad_arguments_exit_2_without_running() -> None:
    code, _, err = await run_cli("--publishers", "1", "--subscribers", "0", timeout=60)
    assert code == 2
    assert "at least 2 peers" in err


async def test_unreachable_server_exits_2(tmp_path: Path) -> None:
    from tests.support.serve import free_port

    url = f"http://127.0.0.1:{free_port()}"
    code, _, err = await run_cli("--url", url, "--duration", "1", timeout=60)
    assert code == 2
    assert "cannot reach" in err
