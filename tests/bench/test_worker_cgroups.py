"""The workers benchmark's CPU quota per worker: real cgroups (v1 ``cpu`` controller)
when this machine lets us write them, skipped with the reason otherwise."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.loadtest.run import ROOT, serve
from bench.workers.cgroups import (
    CPU_ROOT,
    CgroupError,
    WorkerCgroups,
    check_writable,
    keep_placed,
    quota_workers,
    sweep_stale,
)
from bench.workers.procs import children, cpu_s

try:
    check_writable()
    WRITABLE, WHY = True, ""
except CgroupError as exc:
    WRITABLE, WHY = False, str(exc)

needs_cgroups = pytest.mark.skipif(not WRITABLE, reason=f"no writable cpu cgroups: {WHY}")

SLEEPER = "import time; time.sleep(60)  # cgroup-test-sleeper"
SPINNER = "while True: pass  # cgroup-test-spinner"


def spawn(code: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", code])


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        process.kill()
        process.wait()


async def poll(condition: object, timeout_s: float = 5.0) -> None:
    assert callable(condition)
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


@needs_cgroups
async def test_each_worker_gets_its_own_group_and_a_restarted_one_the_free_group(
    processes: list[subprocess.Popen[bytes]],
) -> None:
    groups = WorkerCgroups(2, 0.25, tag=f"huddle-bench-{os.getpid()}-test")
    groups.create()
    try:
        assert (groups.paths[0] / "cpu.cfs_quota_us").read_text().strip() == "5000"
        assert (groups.paths[0] / "cpu.cfs_period_us").read_text().strip() == "20000"
        processes += [spawn(SLEEPER), spawn(SLEEPER)]
        placer = asyncio.create_task(keep_placed(groups, os.getpid(), match="cgroup-test-sleeper"))
        try:
            await poll(lambda: all(groups.members()))
            first = groups.members()
            assert sorted(pid for pids in first for pid in pids) == sorted(p.pid for p in processes)
            # A worker dies and another takes its place: it goes to the group it left.
            dead = processes.pop(0)
            dead.kill()
            dead.wait()
            freed = next(i for i, pids in enumerate(first) if dead.pid in pids)
            processes.append(spawn(SLEEPER))
            await poll(lambda: groups.group_of(processes[-1].pid) == freed)
            assert groups.members()[1 - freed] == first[1 - freed]
        finally:
            placer.cancel()
            with pytest.raises(asyncio.CancelledError):
                await placer
    finally:
        groups.close()
    groups.close()  # idempotent
    assert not any(path.exists() for path in groups.paths)
    # The processes left are back in the root group, still running.
    root = {int(p) for p in (CPU_ROOT / "cgroup.procs").read_text().split()}
    assert {p.pid for p in processes} <= root and all(p.poll() is None for p in processes)


@needs_cgroups
async def test_the_quota_binds(processes: list[subprocess.Popen[bytes]]) -> None:
    groups = WorkerCgroups(1, 0.1, tag=f"huddle-bench-{os.getpid()}-test")
    groups.create()
    try:
        spinner = spawn(SPINNER)
        processes.append(spinner)
        assert groups.place(spinner.pid) == 0
        cpu_then, then = cpu_s(spinner.pid), time.monotonic()
        assert cpu_then is not None
        # Polls until the group was throttled in 25 CFS periods of 20 ms (~0.5 s).
        await poll(lambda: groups.throttling()[0].throttled >= 25)
        cpu_now, now = cpu_s(spinner.pid), time.monotonic()
        assert cpu_now is not None
        share = (cpu_now - cpu_then) / (now - then)
        assert share < 0.2, f"a spinner with 0.1 core used {share:.2f}"
        assert groups.throttling()[0].throttled_s > 0
    finally:
        groups.close()


@needs_cgroups
async def test_the_groups_go_on_error_and_stale_ones_are_swept(
    processes: list[subprocess.Popen[bytes]],
) -> None:
    processes.append(spawn(SLEEPER))
    groups = WorkerCgroups(1, 0.5, tag=f"huddle-bench-{os.getpid()}-test")
    with pytest.raises(RuntimeError, match="boom"):
        async with quota_workers(groups, os.getpid(), 1, match="cgroup-test-sleeper"):
            assert groups.group_of(processes[0].pid) == 0
            raise RuntimeError("boom")
    assert not groups.paths[0].exists()
    # Too few processes: a clear error, and nothing is left behind.
    two = WorkerCgroups(2, 0.5, tag=f"huddle-bench-{os.getpid()}-test")
    with pytest.raises(CgroupError, match="1 of 2 worker processes"):
        async with quota_workers(two, os.getpid(), 2, match="cgroup-test-sleeper", timeout_s=0.5):
            pass
    assert not any(path.exists() for path in two.paths)
    # A run that died (its pid is gone) left a group: the next run removes it.
    gone = spawn("pass")
    gone.wait()
    stale = CPU_ROOT / f"huddle-bench-{gone.pid}-0"
    stale.mkdir()
    assert stale in sweep_stale() and not stale.exists()


@needs_cgroups
async def test_the_workers_of_a_real_server_and_a_restarted_one_are_placed() -> None:
    settings = {"HUDDLE_WORKERS": "2", "HUDDLE_LOG_LEVEL": "ERROR"}
    async with serve(6, settings=settings) as served:
        groups = WorkerCgroups(2, 0.5, tag=f"huddle-bench-{os.getpid()}-test")
        async with quota_workers(groups, served.pid, 2):
            workers = children(served.pid, "media.workers.process")
            assert len(workers) == 2
            assert {groups.group_of(pid) for pid in workers} == {0, 1}
            freed = groups.group_of(workers[0])
            os.kill(workers[0], signal.SIGKILL)
            fresh: list[int] = []

            def replaced() -> bool:
                # One listing decides: two workers, one of them new (a CI run once saw
                # the condition met by one listing and no new worker in the next).
                now = children(served.pid, "media.workers.process")
                fresh[:] = [pid for pid in now if pid not in workers]
                return len(now) == 2 and workers[0] not in now and len(fresh) == 1

            await poll(replaced, timeout_s=30)  # a worker starts in ~1 s; generous when loaded
            (restarted,) = fresh
            await poll(lambda: groups.group_of(restarted) is not None, 10)
            assert groups.group_of(restarted) == freed  # the dead worker's group
            now = children(served.pid, "media.workers.process")
            assert {groups.group_of(pid) for pid in now} == {0, 1}
        assert not any(path.exists() for path in groups.paths)


async def test_one_worker_process_when_the_sfu_is_not_in_the_front() -> None:
    settings = {"HUDDLE_WORKERS": "1", "HUDDLE_SFU_IN_PROCESS": "0", "HUDDLE_LOG_LEVEL": "ERROR"}
    async with serve(6, settings=settings) as served:
        await poll(lambda: len(children(served.pid, "media.workers.process")) == 1, 15)


@needs_cgroups
@pytest.mark.slow
async def test_a_benchmark_stopped_by_sigterm_removes_its_groups_and_servers(
    tmp_path: Path,
) -> None:
    bench = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.workers.run",
        "--workers", "2", "--worker-cpu", "0.5", "--rooms", "1", "--room-size", "2",
        "--duration", "60", "--out", str(tmp_path / "out.json"),
        cwd=ROOT, stdout=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        group = CPU_ROOT / f"huddle-bench-{bench.pid}-1"
        await poll(lambda: bool(group.exists() and (group / "cgroup.procs").read_text()), 30)
        (front,) = children(bench.pid, "server.cli")
        bench.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            assert await bench.wait() == 130
    finally:
        if bench.returncode is None:
            bench.kill()
            await bench.wait()
    assert not list(CPU_ROOT.glob(f"huddle-bench-{bench.pid}-*"))
    assert cpu_s(front) is None  # the server is gone, and with it its workers
    assert not (tmp_path / "out.json").exists()
