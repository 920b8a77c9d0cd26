"""Background workers, each an owned task: start() creates it, close() cancels and awaits."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from server.calls import CallService
from server.errors import Unavailable

logger = logging.getLogger(__name__)

_BATCH = 100
_MAX_BATCHES_PER_SWEEP = 20


class PeriodicWorker:
    """Runs ``step`` every ``interval_s``; a failing step is logged, never fatal."""

    def __init__(self, name: str, interval_s: float, step: Callable[[], Awaitable[None]]) -> None:
        self.name = name
        self._interval_s = interval_s
        self._step = step
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"worker:{self.name}")

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            try:
                await self._step()
            except asyncio.CancelledError:
                raise
            except Unavailable as exc:
                logger.warning("worker %s: %s", self.name, exc.message)
            except Exception:
                logger.exception("worker %s failed; retrying next interval", self.name)
            await asyncio.sleep(self._interval_s)


def call_sweeper(calls: CallService) -> PeriodicWorker:
    """Ends calls past the ringing timeout (missed), max duration (expired) or idle
    for too long (cleaned), and refreshes the active-calls gauge. Safe on several
    nodes at once: each end re-checks its rule under the call's row lock."""

    async def sweep() -> None:
        for _ in range(_MAX_BATCHES_PER_SWEEP):
            if await calls.expire_due(batch=_BATCH) < _BATCH:
                break  # a full batch may mean more are due; otherwise done
        await calls.refresh_gauges()

    return PeriodicWorker("call-sweeper", calls.limits.sweep_interval_s, sweep)
