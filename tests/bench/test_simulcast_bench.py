"""The simulcast benchmark's parts (bench/simulcast), and its smallest run end to end.

The benchmark itself (``make bench-simulcast``) is run by hand on a quiet
machine; here: what its figures are made of, and that a room of 2 in each
configuration, 1 s each, runs against a real ``huddle serve``.
"""

from __future__ import annotations

import asyncio
import json
import struct
import sys
from pathlib import Path

import pytest

from bench.simulcast import cpu, switch
from bench.simulcast.sniff import KeyframeTap
from media.loadtest.netcap import WIRE_OVERHEAD, ReceiveCap
from tests.support.serve import ROOT

VP8, RTX, OPUS = 96, 97, 111


def keyframe(width: int, height: int) -> bytes:
    """A VP8 payload descriptor (S, partition 0, 15-bit picture id) and a keyframe's start."""
    descriptor = bytes([0x90, 0x80, 0x80 | 0x12, 0x34])
    tag = bytes([0x00, 0x00, 0x00])  # bit 0 clear: a keyframe
    return descriptor + tag + b"\x9d\x01\x2a" + struct.pack("<HH", width, height) + b"\x00" * 20


def rtp(payload_type: int, payload: bytes, *, seq: int = 1, padding: int = 0) -> bytes:
    first = 0x80 | (0x20 if padding else 0)
    header = struct.pack("!BBHII", first, payload_type, seq, 1000, 0x1234)
    pad = (b"\x00" * (padding - 1) + bytes([padding])) if padding else b""
    return header + payload + pad


def test_the_tap_notes_every_keyframe_start_that_arrives() -> None:
    now = [10.0]
    tap = KeyframeTap({VP8}, {RTX}, clock=lambda: now[0])
    tap.observe(rtp(VP8, keyframe(640, 360)))
    now[0] = 11.0
    tap.observe(rtp(VP8, bytes([0x90, 0x80, 0x92, 0x35]) + b"\x01" * 30))  # an interframe
    tap.observe(rtp(OPUS, keyframe(320, 180)))  # not video: whatever its bytes say
    tap.observe(rtp(VP8, b"", padding=8))  # a padding-only probe
    now[0] = 12.0
    tap.observe(rtp(RTX, b"\x00\x07" + keyframe(160, 90)))  # a repaired first packet
    tap.observe(rtp(VP8, keyframe(320, 180), padding=4))
    assert tap.seen == [(10.0, 640, 360), (12.0, 160, 90), (12.0, 320, 180)]
    assert tap.first_after(10.5, {(160, 90), (320, 180)}) == (12.0, (160, 90))
    assert tap.first_after(12.5, {(640, 360)}) is None
    assert tap.size_before(11.0) == (640, 360)
    assert tap.size_before(10.0) is None


def test_a_cap_can_be_lifted_and_set_again() -> None:
    now = [0.0]
    cap = ReceiveCap(80_000, burst_bytes=6000, queue_s=0.3, clock=lambda: now[0])
    size = 1000 - WIRE_OVERHEAD
    assert sum(cap.admit(size) for _ in range(10)) == 9  # 6 at once, 3 queued
    cap.set_bitrate(None)
    assert cap.bitrate is None and all(cap.admit(size) for _ in range(100))
    cap.set_bitrate(80_000)  # from a full bucket, as a link that just changed
    assert sum(cap.admit(size) for _ in range(10)) == 9
    assert (cap.passed, cap.dropped) == (118, 2)
    with pytest.raises(ValueError, match="positive"):
        cap.set_bitrate(0)


def run(layers: int, core: float, *, lost: int = 0) -> cpu.CpuRun:
    return cpu.CpuRun(
        layers=layers,
        size=6,
        window_s=10.0,
        server_cpu_s=core * 10.0,
        generator_cpu_s=3.0,
        forwarded_packets=10_000,
        offered_video_packets_per_s=600.0,
        lost=lost,
        fps_mean=30.0,
        fps_min=30.0,
        on_top=30,
        video_tracks=30,
        ready_s=2.0,
        load=(0.1, 0.1, 0.1),
    )


def test_cpu_runs_alternate_and_are_compared_per_pair() -> None:
    assert cpu.order(3) == [1, 3, 3, 1, 1, 3]
    runs = [run(1, 0.10), run(3, 0.12), run(3, 0.15), run(1, 0.10), run(1, 0.08), run(3, 0.10)]
    assert cpu.ratios(runs) == pytest.approx([1.2, 1.5, 1.25])
    s = cpu.summary(runs)
    assert s["ratio_median"] == pytest.approx(1.25)
    assert s["server_core_1_median"] == pytest.approx(0.10)
    assert s["server_core_3_median"] == pytest.approx(0.12)
    assert s["clean"] is True
    assert cpu.summary([*runs[:-1], run(3, 0.1, lost=3)])["clean"] is False
    assert "3 layers / 1 layer: 1.25" in "\n".join(cpu.summary_lines(runs))


def test_switch_trials_summarize_what_was_measured() -> None:
    trials = [
        switch.Trial(1, down_s=1.0, down_layer="q", down_quality_s=1.2, up_s=4.0),
        switch.Trial(2, down_s=3.0, down_layer="h", up_s=2.0, up_quality_s=2.1),
        switch.Trial(3, down_s=2.0, down_layer="q", paused=True),
        switch.Trial(4, error="trial 4: no lower layer: not within 30 s"),
    ]
    s = switch.summary(trials)
    assert s["down_s"] == {"n": 3, "min": 1.0, "median": 2.0, "max": 3.0}
    assert s["up_s"] == {"n": 2, "min": 2.0, "median": 3.0, "max": 4.0}
    assert s["up_quality_s"] == {"n": 1, "min": 2.1, "median": 2.1, "max": 2.1}
    assert (s["failed"], s["paused"], s["watcher_left_top"]) == (1, 1, 0)
    text = "\n".join(switch.summary_lines(trials))
    assert "lower layer: min 1.00 / median 2.00 / max 3.00 s (n = 3)" in text
    assert "[trial 4: no lower layer" in switch.trial_line(trials[3])


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_the_smallest_cpu_run_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.simulcast.run",
        "--only", "cpu",
        "--room", "2", "--rounds", "1", "--warmup", "0", "--window", "1", "--cooldown", "0",
        "--video-size", "128x72", "--video-bitrate", "150k", "--video-fps", "15",
        "--no-pin", "--quiet-wait", "0",
        "--out", str(tmp_path), "--json", str(out),
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    stdout, _ = await asyncio.wait_for(process.communicate(), timeout=100)
    text = stdout.decode(errors="replace")
    assert process.returncode == 0, text[-3000:]
    results = json.loads(out.read_text())
    runs = results["cpu"]["runs"]
    assert [r["layers"] for r in runs] == [1, 3]
    for r in runs:
        # Each peer receives the other's video, on the top layer, and the server worked.
        assert r["video_tracks"] == 2 and r["on_top"] == 2, r
        assert r["forwarded_packets"] > 0 and r["server_cpu_s"] > 0, r
    assert results["cpu"]["summary"]["ratio_median"] is not None
    assert "3 layers / 1 layer:" in text
