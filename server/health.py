"""Readiness: each dependency registers a check; /ready reports all of them.

Every check is bounded by ``timeout_s`` (under a second by default) and the
report never waits longer, whatever a dependency does: a check that has not
answered in time is reported down and cancelled without being awaited (a
client stuck in its cleanup, such as a driver talking to a frozen server, must
not hold the probe). Orchestrators can therefore probe with a short timeout.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from server.errors import HuddleError

Check = Callable[[], Awaitable[None]]


class Readiness:
    def __init__(self, timeout_s: float = 0.8) -> None:
        self._checks: dict[str, Check] = {}
        self._timeout_s = timeout_s
        self._stragglers: set[asyncio.Task[None]] = set()
        self.shutting_down = False
        #: Set when the node starts draining (SIGTERM, POST /v1/admin/drain).
        self.draining = False

    def add(self, name: str, check: Check) -> None:
        """``check`` returns when the dependency is usable and raises otherwise."""
        self._checks[name] = check

    async def report(self) -> tuple[bool, dict[str, dict[str, str]]]:
        tasks = {
            name: asyncio.create_task(self._call(check), name=f"ready-{name}")
            for name, check in self._checks.items()
        }
        if tasks:
            await asyncio.wait(tasks.values(), timeout=self._timeout_s)
        report = {name: self._result(task) for name, task in tasks.items()}
        ok = not (self.shutting_down or self.draining) and all(
            r["status"] == "up" for r in report.values()
        )
        return ok, report

    async def close(self) -> None:
        """Cancel and await checks still running from earlier probes."""
        stragglers = list(self._stragglers)
        for task in stragglers:
            task.cancel()
        await asyncio.gather(*stragglers, return_exceptions=True)

    @staticmethod
    async def _call(check: Check) -> None:
        await check()

    def _result(self, task: asyncio.Task[None]) -> dict[str, str]:
        if not task.done():
            task.cancel()
            self._stragglers.add(task)
            task.add_done_callback(self._stragglers.discard)
            task.add_done_callback(_consume)
            return {"status": "down", "error": f"no answer within {self._timeout_s:g} s"}
        exc = task.exception()
        if exc is None:
            return {"status": "up"}
        # Any failure means "down"; the message says why.
        message = (exc.message if isinstance(exc, HuddleError) else "") or str(exc)
        message = message or type(exc).__name__
        return {"status": "down", "error": message}


def _consume(task: asyncio.Task[None]) -> None:
    # Retrieve the straggler's outcome so asyncio never logs it as unretrieved.
    if not task.cancelled():
        task.exception()
