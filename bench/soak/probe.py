"""Samples a running ``huddle serve``: RSS, open FDs, asyncio tasks, database connections.

RSS and FDs come from ``/proc/<pid>`` (Linux), the task count from the
server's own ``/metrics`` (``huddle_asyncio_tasks``), the database
connections from ``pg_stat_activity`` for the ``application_name`` the soak
put in the server's database URL (Postgres only; ``None`` on SQLite).
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from typing import Any

import aiohttp
import asyncpg

TASKS_METRIC = "huddle_asyncio_tasks"


@dataclass(frozen=True)
class Sample:
    t_s: float  # seconds since the probe started
    phase: str
    rss_bytes: int
    open_fds: int
    asyncio_tasks: int | None
    db_connections: int | None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def metric_value(text: str, name: str) -> float | None:
    """The value of an unlabelled metric in Prometheus text format."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


class ServerProbe:
    def __init__(
        self,
        pid: int,
        base_url: str,
        session: aiohttp.ClientSession,
        *,
        postgres_url: str | None = None,
        application_name: str | None = None,
    ) -> None:
        self.pid = pid
        self.base_url = base_url.rstrip("/")
        self._session = session
        self._postgres_url = postgres_url
        self._application_name = application_name
        self._admin: asyncpg.Connection | None = None
        self._t0 = time.monotonic()
        self.samples: list[Sample] = []

    async def __aenter__(self) -> ServerProbe:
        if self._postgres_url is not None:
            self._admin = await asyncpg.connect(self._postgres_url, timeout=10)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._admin is not None:
            await self._admin.close()
            self._admin = None

    async def asyncio_tasks(self) -> int | None:
        timeout = aiohttp.ClientTimeout(total=10)
        async with self._session.get(f"{self.base_url}/metrics", timeout=timeout) as response:
            text = await response.text()
        value = metric_value(text, TASKS_METRIC)
        # The scrape's own request handler is one of the tasks counted.
        return None if value is None else int(value) - 1

    async def db_connections(self) -> int | None:
        if self._admin is None:
            return None
        count = await self._admin.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
            self._application_name,
        )
        return int(count)

    async def sample(self, phase: str) -> Sample:
        tasks = await self.asyncio_tasks()
        sample = Sample(
            t_s=round(time.monotonic() - self._t0, 3),
            phase=phase,
            rss_bytes=rss_bytes(self.pid),
            open_fds=open_fds(self.pid),
            asyncio_tasks=tasks,
            db_connections=await self.db_connections(),
        )
        self.samples.append(sample)
        return sample
