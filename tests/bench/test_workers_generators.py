"""Two load generator processes of the workers benchmark against a real server:
they start their steady windows together (the barrier) and report each room."""

from __future__ import annotations

import asyncio

import pytest

from bench.loadtest.run import serve
from bench.workers.generator import GeneratorSpec
from bench.workers.run import run_generator

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


def spec(url: str, *, barrier: bool = True) -> GeneratorSpec:
    return GeneratorSpec(
        url=url,
        rooms=1,
        room_size=2,
        duration_s=2.0,
        settle_s=15.0,
        ramp_per_s=0.0,
        video_bitrate=100_000,
        light_receivers=True,
        min_fps=5.0,
        max_loss_pct=5.0,
        barrier=barrier,
    )


async def test_two_generators_share_one_steady_window() -> None:
    async with serve(3) as served:
        barrier = asyncio.Barrier(2)
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(run_generator(spec(served.url), barrier, 90)) for _ in "ab"]
        first, second = (task.result() for task in tasks)
    for result in (first, second):
        (room,) = result["rooms"]
        assert room["holds"] and room["tracks"] == 4 and room["fps_p10"] >= 5, room
        assert result["cpu_run_pct"] > 0
    # The windows start within a scheduling moment of each other, whatever each's settle.
    assert abs(first["steady_start"] - second["steady_start"]) < 0.5
    overlap = min(first["steady_end"], second["steady_end"]) - max(
        first["steady_start"], second["steady_start"]
    )
    assert overlap > 1.5


async def test_a_generator_that_fails_is_an_error() -> None:
    bad = GeneratorSpec(**{**spec("http://127.0.0.1:9").__dict__, "rooms": 0})
    with pytest.raises(RuntimeError, match="a load generator exited with 1"):
        await run_generator(bad, asyncio.Barrier(1), 30)
