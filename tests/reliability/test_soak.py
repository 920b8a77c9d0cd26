"""The soak in bounded form: a real server under lifecycle and media cycles, then idle again.

``make soak`` runs the same code for 10 minutes (``bench/soak``, figures in
docs/reliability.md); here it runs 35 s of load (5 minutes under ``make
reliability``) and asserts what must hold however noisy the shared machine
is: no request, socket or media round misbehaved, every call ended, nothing
was logged at ERROR, the open FDs and asyncio tasks went back to the idle
baseline once the cycles stopped, and RSS grew by less than a generous bound.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.soak.run import SoakConfig, run_soak, summary_text
from tests.reliability.scale import seconds
from tests.support.services import unreachable

DURATION_S = seconds(35, 300)
MiB = 2**20

pytestmark = [
    pytest.mark.slow,
    pytest.mark.postgres,
    pytest.mark.timeout(DURATION_S + 180),
]


async def test_soak_has_no_errors_and_no_growth(tmp_path: Path) -> None:
    config = SoakConfig(
        duration_s=DURATION_S,
        backend="postgres",
        rate=4.0,
        concurrency=4,
        sample_interval_s=2.0,
        warmup_s=min(15.0, DURATION_S / 3),
        media_rooms=2,
        media_publishers=3,
        media_room_s=6.0,
        settle_timeout_s=45.0,
    )
    result = await run_soak(config, tmp_path, progress=False)
    report = summary_text(result)
    print(report)
    if result["backend"].startswith("sqlite"):
        unreachable("Postgres", RuntimeError(result["backend"]))

    calls, requests, media = result["calls"], result["requests"], result["media"]
    assert requests["errors"] == 0, report
    assert calls["failed"] == 0, report
    assert calls["unended"] == [], report
    assert result["server_log_errors"] == [], report
    assert media["rounds"] >= 2 and media["failed_rounds"] == 0, report
    assert media["peers_failed"] == 0 and media["tracks_missing"] == 0, report
    # Bounded rate, but the whole rotation ran, many times.
    assert calls["completed"] >= config.rate * DURATION_S * 0.4, report
    assert set(calls["by_scenario"]) == {
        "complete",
        "end",
        "decline",
        "errors",
        "dropped",
        "unanswered",
    }, report

    # Back to the idle baseline: every socket, peer connection and task of
    # the cycles is gone (the database pool's sockets shrink only after 60 s
    # idle, so they are left out of the FD count).
    before, after = result["baseline"], result["after"]

    def own_fds(sample: dict[str, int]) -> int:
        return sample["open_fds"] - (sample["db_connections"] or 0)

    assert before["asyncio_tasks"] is not None, "no huddle_asyncio_tasks on /metrics"
    assert own_fds(after) <= own_fds(before) + 4, report
    assert after["asyncio_tasks"] <= before["asyncio_tasks"] + 2, report
    assert after["db_connections"] <= 10 + 1, report  # the pool's max_size, plus one

    # Memory: the first media rooms load aiortc, codecs and buffers (tens of
    # MiB that CPython keeps); after that, rounds must not add up.
    assert after["rss_bytes"] - before["rss_bytes"] < 160 * MiB, report
    between = [s for s in result["samples"] if s["phase"] == "between"]
    if len(between) >= 2:
        assert between[-1]["rss_bytes"] - between[0]["rss_bytes"] < 48 * MiB, report
