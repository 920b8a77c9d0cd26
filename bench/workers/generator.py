"""One load-generator process of the workers benchmark.

``python -m bench.workers.generator '<json spec>'`` runs the load tester
(:class:`media.loadtest.orchestration.LoadTest`) against the spec's URL and
prints one JSON line (after ``settled``, see :class:`GeneratorSpec`): each
room's quality (:mod:`bench.workers.quality`), its steady window in
``CLOCK_MONOTONIC`` seconds (the same clock in every process of the machine,
so the parent can measure the server's CPU over it) and its own CPU over that
window and over the whole run. The benchmark runs one or
more of these at a time, splitting the rooms, so that the generator does not
run out of its one core before the server does.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys
import time
from typing import Any

from media.loadtest.metrics import Thresholds
from media.loadtest.orchestration import LoadTest, LoadTestConfig

from .quality import QualityBar, room_quality


@dataclasses.dataclass(frozen=True)
class GeneratorSpec:
    url: str
    rooms: int
    room_size: int
    duration_s: float
    settle_s: float
    ramp_per_s: float
    video_bitrate: int
    light_receivers: bool
    min_fps: float
    max_loss_pct: float
    #: Once settled, print ``settled`` and start the steady window when a line
    #: comes on stdin (the parent's ``go``, once every generator settled).
    barrier: bool = False


SETTLED = "settled"


async def _wait_for_go() -> None:
    print(SETTLED, flush=True)
    await asyncio.to_thread(sys.stdin.readline)


async def generate(spec: GeneratorSpec) -> dict[str, Any]:
    config = LoadTestConfig(
        url=spec.url,
        rooms=spec.rooms,
        publishers=spec.room_size,
        subscribers=0,
        duration_s=spec.duration_s,
        ramp_per_s=spec.ramp_per_s,
        video_bitrate=spec.video_bitrate,
        light_receivers=spec.light_receivers,
        settle_s=spec.settle_s,
        thresholds=Thresholds(),
    )
    cpu_then, then = time.process_time(), time.monotonic()
    report = await LoadTest(config, before_steady=_wait_for_go if spec.barrier else None).run()
    cpu_now, now = time.process_time(), time.monotonic()
    bar = QualityBar(min_fps=spec.min_fps, max_loss_pct=spec.max_loss_pct)
    steady = [p.loadgen_cpu_pct for p in report.timeline if p.phase == "steady"]
    steady_end = now - report.leave_s  # then one /metrics scrape: a few ms early
    return {
        "rooms": [dataclasses.asdict(room_quality(room, bar)) for room in report.rooms],
        "steady_start": steady_end - report.steady_s,
        "steady_end": steady_end,
        "cpu_steady_pct": round(sum(c for c in steady if c is not None) / len(steady), 1)
        if steady
        else None,
        "cpu_run_pct": round(100 * (cpu_now - cpu_then) / (now - then), 1),
        "warnings": report.warnings,
    }


def main() -> None:
    spec = GeneratorSpec(**json.loads(sys.argv[1]))
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover
        pass
    result = asyncio.run(generate(spec))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
