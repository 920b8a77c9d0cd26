"""The workers benchmark's room-count search, against a fake server that holds up
to a known capacity (the search is pure logic), and the rooms' split over the
load generator processes."""

from __future__ import annotations

import pytest

from bench.workers.run import parse_args, quota_check, split
from bench.workers.search import Measure, find_capacity


def server(capacity: int, log: list[int]) -> Measure:
    async def measure(rooms: int) -> bool:
        log.append(rooms)
        return rooms <= capacity

    return measure


@pytest.mark.parametrize("capacity", [0, 1, 3, 5, 6, 9, 12, 23])
@pytest.mark.parametrize("start", [1, 4, 10])
async def test_it_finds_the_capacity_from_any_start(capacity: int, start: int) -> None:
    log: list[int] = []
    found = await find_capacity(server(capacity, log), start=start, max_rooms=24, max_steps=12)
    assert found.capacity == capacity and found.exact and found.cut_short is None
    assert found.failed_at == capacity + 1
    assert len(log) == len(set(log)) <= 9  # never the same count twice
    assert [n for n, _ in found.tried] == log


async def test_a_good_guess_takes_two_steps() -> None:
    log: list[int] = []
    found = await find_capacity(server(10, log), start=10, max_rooms=24, max_steps=8)
    assert (found.capacity, log) == (10, [10, 11])


async def test_it_is_bounded_by_rooms_steps_and_time() -> None:
    log: list[int] = []
    top = await find_capacity(server(99, log), start=4, max_rooms=6, max_steps=8)
    assert (top.capacity, top.cut_short, top.exact, log) == (6, "max_rooms", False, [4, 5, 6])
    short = await find_capacity(server(20, []), start=1, max_rooms=24, max_steps=3)
    assert (short.capacity, short.cut_short, len(short.tried)) == (4, "steps", 3)
    # Each measure takes 10 s of a fake clock; 25 s left: two measures, not a third.
    now = [0.0]

    async def slow(rooms: int) -> bool:
        now[0] += 10
        return True

    timed = await find_capacity(
        slow, start=1, max_rooms=24, max_steps=8, deadline=25.0, clock=lambda: now[0]
    )
    assert (len(timed.tried), timed.cut_short) == (2, "time")


def test_rooms_split_evenly_over_the_generators() -> None:
    assert split(7, 2) == [4, 3] and split(1, 2) == [1] and split(6, 3) == [2, 2, 2]
    args = parse_args(["--worker-cpu", "0.25", "--generators", "2"])
    assert (args.worker_cpu, args.generators, args.rooms, args.retries) == (0.25, 2, None, 1)
    with pytest.raises(SystemExit):
        parse_args(["--generators", "0"])


def test_the_quota_check_reads_the_first_failing_count() -> None:
    def step(rooms: int, holds: bool, *cpu: float) -> dict[str, object]:
        return {"rooms": rooms, "holds": holds, "worker_cpu": [{"cpu_pct": c} for c in cpu]}

    run = {
        "steps": [
            step(4, True, 20.0),
            step(6, False, 24.6, 24.9),
            step(5, False, 23.0, 25.0),
            step(3, False, 9.0),  # a hiccup: its retry held
            step(3, True, 15.0),
        ]
    }
    check = quota_check(run, 0.25)
    assert check is not None and check["rooms"] == 5 and check["binds"]
    starved = quota_check({"steps": [step(5, False, 12.0, 24.0)]}, 0.25)
    assert starved is not None and not starved["binds"]
    assert quota_check({"steps": [step(4, True, 20.0)]}, 0.25) is None
