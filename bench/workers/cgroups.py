"""A fixed CPU budget per media worker: one cgroup (v1 ``cpu`` controller) each.

:class:`WorkerCgroups` makes ``count`` groups ``<root>/huddle-bench-<pid>-<i>``
with a CFS quota of ``cores`` cores each and puts each worker process in its own
(a process not yet in one goes to a group with no live process in it, so a worker
the pool restarts takes its dead predecessor's group). :func:`keep_placed` polls
the front's children and places new ones. :meth:`WorkerCgroups.close` moves
what is left back to the root group and removes the groups; idempotent.

On this machine: cgroup v1 with the ``cpu`` controller mounted at
``/sys/fs/cgroup/cpu``, writable by root.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from .procs import children

CPU_ROOT = Path("/sys/fs/cgroup/cpu")
PREFIX = "huddle-bench-"


class CgroupError(RuntimeError):
    """The cgroups cannot be made or written (not root, no v1 cpu controller)."""


def check_writable(root: Path = CPU_ROOT) -> None:
    """Raise :class:`CgroupError` saying why CPU quotas cannot be set under ``root``."""
    for name in ("cgroup.procs", "cpu.cfs_quota_us", "cpu.cfs_period_us"):
        if not (root / name).exists():
            raise CgroupError(
                f"{root} is not a cgroup v1 cpu controller (no {name}); "
                "a per-worker CPU quota needs one"
            )
    if not os.access(root, os.W_OK) or not os.access(root / "cgroup.procs", os.W_OK):
        raise CgroupError(f"{root} is not writable: a per-worker CPU quota needs root")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale(root: Path = CPU_ROOT) -> list[Path]:
    """Remove the groups of benchmark runs that died without cleaning up (their
    pid is gone); returns what it removed."""
    removed = []
    for path in sorted(root.glob(f"{PREFIX}*-*")):
        owner = path.name[len(PREFIX) :].split("-", 1)[0]
        if owner.isdigit() and not _alive(int(owner)):
            _release(path, root)
            removed.append(path)
    return removed


def _pids(path: Path) -> set[int]:
    try:
        return {int(line) for line in (path / "cgroup.procs").read_text().split()}
    except FileNotFoundError:
        return set()


def _release(path: Path, root: Path) -> None:
    """Move a group's processes back to ``root`` and remove the group (gone: fine)."""
    for _ in range(50):
        for pid in _pids(path):
            with contextlib.suppress(ProcessLookupError, FileNotFoundError):
                (root / "cgroup.procs").write_text(str(pid))
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError as exc:  # EBUSY: a process joined or has not left yet
            if exc.errno != errno.EBUSY:
                raise
    raise CgroupError(f"{path} stayed busy; remove it with rmdir once its processes exit")


@dataclass(frozen=True)
class Throttling:
    """``cpu.stat`` of one group: CFS periods, how many ran out of quota, the time lost."""

    periods: int
    throttled: int
    throttled_s: float


class WorkerCgroups:
    """``count`` cpu cgroups of ``cores`` cores each, one worker process per group."""

    def __init__(
        self,
        count: int,
        cores: float,
        *,
        root: Path = CPU_ROOT,
        period_us: int = 20_000,
        tag: str | None = None,
    ) -> None:
        if count < 1:
            raise ValueError("at least one group")
        if not 0.01 <= cores <= 64:
            raise ValueError("cores per worker must be in [0.01, 64]")
        if not 1_000 <= period_us <= 1_000_000:
            raise ValueError("the CFS period must be in [1 ms, 1 s]")
        self.root = root
        self.cores = cores
        self.period_us = period_us
        self.quota_us = round(cores * period_us)
        tag = tag or f"{PREFIX}{os.getpid()}"
        self.paths = [root / f"{tag}-{i}" for i in range(count)]
        self._closed = False

    def create(self) -> None:
        """Make the groups and set their quota (:class:`CgroupError` if it cannot)."""
        check_writable(self.root)
        try:
            for path in self.paths:
                path.mkdir(exist_ok=True)
                (path / "cpu.cfs_period_us").write_text(str(self.period_us))
                (path / "cpu.cfs_quota_us").write_text(str(self.quota_us))
        except OSError as exc:
            self.close()
            raise CgroupError(f"making the worker cgroups under {self.root}: {exc}") from exc

    def group_of(self, pid: int) -> int | None:
        for index, path in enumerate(self.paths):
            if pid in _pids(path):
                return index
        return None

    def place(self, pid: int) -> int | None:
        """Put ``pid`` in a group with no live process (its own if already in one);
        its index, or None if the process is gone or every group is taken."""
        if (index := self.group_of(pid)) is not None:
            return index
        for index, path in enumerate(self.paths):
            if not _pids(path):
                try:
                    (path / "cgroup.procs").write_text(str(pid))
                except ProcessLookupError:
                    return None
                return index
        return None

    def members(self) -> list[set[int]]:
        """The processes of each group, by index."""
        return [_pids(path) for path in self.paths]

    def throttling(self) -> list[Throttling]:
        out = []
        for path in self.paths:
            fields = dict(
                line.split() for line in (path / "cpu.stat").read_text().splitlines() if line
            )
            out.append(
                Throttling(
                    int(fields.get("nr_periods", 0)),
                    int(fields.get("nr_throttled", 0)),
                    int(fields.get("throttled_time", 0)) / 1e9,
                )
            )
        return out

    def close(self) -> None:
        """Move every process left back to the root group, remove the groups. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for path in self.paths:
            _release(path, self.root)


#: A worker process's command line: ``python -m media.workers.process <fd> <front pid>``.
WORKER_MODULE = "media.workers.process"


async def keep_placed(
    groups: WorkerCgroups, parent: int, *, match: str = WORKER_MODULE, interval_s: float = 0.1
) -> None:
    """Forever: put each child of ``parent`` whose command line has ``match`` in a
    group (a worker the pool restarts, too). Cancel to stop."""
    while True:
        for pid in children(parent, match):
            groups.place(pid)
        await asyncio.sleep(interval_s)


@contextlib.asynccontextmanager
async def quota_workers(
    groups: WorkerCgroups,
    parent: int,
    count: int,
    *,
    match: str = WORKER_MODULE,
    timeout_s: float = 30.0,
) -> AsyncIterator[WorkerCgroups]:
    """Make the groups, wait (bounded) until ``count`` children of ``parent`` are in
    them, keep placing restarted ones while the block runs; the groups are removed
    on the way out, also on error or cancellation."""
    groups.create()
    try:
        placer = asyncio.create_task(keep_placed(groups, parent, match=match), name="cgroups")
        try:
            try:
                async with asyncio.timeout(timeout_s):
                    while sum(1 for pids in groups.members() if pids) < count:
                        if placer.done():
                            placer.result()
                        await asyncio.sleep(0.05)
            except TimeoutError:
                placed = sum(1 for pids in groups.members() if pids)
                raise CgroupError(
                    f"{placed} of {count} worker processes of {parent} were placed "
                    f"within {timeout_s:g} s"
                ) from None
            yield groups
        finally:
            placer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await placer
    finally:
        groups.close()
