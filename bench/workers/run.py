"""Media workers benchmark (issue #15): rooms of 5 load-tester peers on one worker
against two, in the same run, by the same per-room quality measure.

For each worker count of ``--workers`` (default ``1,2``) it starts a fresh
``huddle serve --workers N`` (uvloop, SQLite, ICE on 127.0.0.1) and runs the
load tester (:class:`media.loadtest.orchestration.LoadTest`, in this process)
with ``--rooms`` rooms at a time, each step a fresh run of ``--room-size``
publishers who all receive each other (VP8 + Opus). Each room's quality is
measured the same way (:mod:`bench.workers.quality`); the steps stop at the
first count where a room does not hold. A worker count's *capacity* is the
largest room count where every room held; the report gives both capacities
and their ratio, with the server's CPU (the front and its workers, from
``/proc``) and the load generator's per step::

    python -m bench.workers.run                              # ~10-20 min
    python -m bench.workers.run --rooms 1 --duration 10      # a smoke run

The load generator shares the machine with the server: on two cores it
competes with two workers, which the report's load-generator CPU shows.
Everything is on loopback and bounded in count and time.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from bench.loadtest.run import ROOT, serve
from media.loadtest.metrics import Thresholds
from media.loadtest.orchestration import LoadTest, LoadTestConfig

from .quality import QualityBar, RoomQuality, room_quality

_TICK = os.sysconf("SC_CLK_TCK")


def tree_cpu_s(pid: int) -> float:
    """CPU seconds of a process and its live children (the front and its workers)."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(entry.name) == pid or int(fields[1]) == pid:
            total += (int(fields[11]) + int(fields[12])) / _TICK
    return total


@dataclasses.dataclass(frozen=True)
class Step:
    workers: int
    rooms: int
    held: int
    server_cpu_pct: float
    loadgen_cpu_pct: float
    quality: list[RoomQuality]

    @property
    def holds(self) -> bool:
        return self.held == self.rooms


async def run_step(url: str, pid: int, args: argparse.Namespace, workers: int, rooms: int) -> Step:
    config = LoadTestConfig(
        url=url,
        rooms=rooms,
        publishers=args.room_size,
        subscribers=0,
        duration_s=args.duration,
        ramp_per_s=args.ramp,
        video_bitrate=args.video_bitrate,
        light_receivers=args.light_receivers,
        settle_s=args.settle,
        thresholds=Thresholds(),
    )
    cpu_then, own_then, then = tree_cpu_s(pid), time.process_time(), time.monotonic()
    report = await LoadTest(config).run()
    elapsed = time.monotonic() - then
    bar = QualityBar(min_fps=args.min_fps, max_loss_pct=args.max_loss)
    quality = [room_quality(room, bar) for room in report.rooms]
    return Step(
        workers=workers,
        rooms=rooms,
        held=sum(1 for q in quality if q.holds),
        server_cpu_pct=round(100 * (tree_cpu_s(pid) - cpu_then) / elapsed, 1),
        loadgen_cpu_pct=round(100 * (time.process_time() - own_then) / elapsed, 1),
        quality=quality,
    )


def line(step: Step) -> str:
    fps = [q.fps_p10 for q in step.quality]
    loss = max((q.loss_pct for q in step.quality), default=0.0)
    return (
        f"workers={step.workers} rooms={step.rooms:3d} held={step.held:3d} "
        f"worst-room fps p10={min(fps, default=0):5.1f} worst loss={loss:5.2f}% "
        f"server cpu={step.server_cpu_pct:6.1f}% loadgen cpu={step.loadgen_cpu_pct:5.1f}%"
    )


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    counts = [int(n) for n in args.workers.split(",")]
    steps = [int(n) for n in args.rooms.split(",")]
    results: dict[str, Any] = {"config": vars(args) | {"out": str(args.out)}, "runs": {}}
    for workers in counts:
        settings = {"HUDDLE_WORKERS": str(workers)}
        done: list[Step] = []
        async with serve(args.room_size + 1, settings=settings) as served:
            for rooms in steps:
                step = await run_step(served.url, served.pid, args, workers, rooms)
                print(line(step), flush=True)
                done.append(step)
                if not step.holds:
                    break
        capacity = max((s.rooms for s in done if s.holds), default=0)
        results["runs"][str(workers)] = {
            "capacity_rooms": capacity,
            "steps": [dataclasses.asdict(s) for s in done],
        }
        print(f"workers={workers}: capacity {capacity} room(s) of {args.room_size}", flush=True)
    capacities = {w: results["runs"][str(w)]["capacity_rooms"] for w in counts}
    if len(counts) >= 2 and capacities[counts[0]]:
        ratio = capacities[counts[-1]] / capacities[counts[0]]
        results["ratio"] = round(ratio, 2)
        print(f"capacity ratio {counts[-1]} over {counts[0]} worker(s): {ratio:.2f}")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="1,2", help="worker counts to compare")
    parser.add_argument("--rooms", default="1,2,3,4,5,6,8,10", help="room counts to step through")
    parser.add_argument("--room-size", type=int, default=5)
    parser.add_argument("--duration", type=float, default=30.0, help="seconds per step")
    parser.add_argument("--settle", type=float, default=10.0, help="seconds before the window")
    parser.add_argument("--ramp", type=float, default=5.0, help="joins per second")
    parser.add_argument("--video-bitrate", type=int, default=300_000)
    parser.add_argument("--min-fps", type=float, default=24.0)
    parser.add_argument("--max-loss", type=float, default=2.0, help="percent")
    parser.add_argument(
        "--full-receivers",
        dest="light_receivers",
        action="store_false",
        help="aiortc's receive path (default: header-counting receivers, ~4x cheaper)",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "var" / "bench-workers.json")
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover
        pass
    results = asyncio.run(main_async(args))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"report: {args.out}")
    sys.exit(0)


if __name__ == "__main__":
    main()
