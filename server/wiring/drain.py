"""Drain in the composition root: SIGTERM and ``POST /v1/admin/drain`` start it,
``/ready`` reports it, and the process stops once it is done.

The hub does the draining (:mod:`signaling.drain`); this only ties it to the
readiness report, the drain timeout and the process: ``huddle serve`` binds
:meth:`DrainControl.bind_stop` to its graceful stop (``server.http.edge``),
so a drain started over HTTP also ends the process. Without a bound stop (an
app in a test) the drained node stays up, taking nothing new.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from aiohttp import web

from server.health import Readiness
from signaling.hub import SignalingHub

logger = logging.getLogger(__name__)


class DrainControl:
    def __init__(self, readiness: Readiness, timeout_s: float) -> None:
        self.readiness = readiness
        self.timeout_s = timeout_s
        self.hub: SignalingHub | None = None
        self._stop: Callable[[], None] | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def started(self) -> bool:
        return self._task is not None

    def bind_stop(self, stop: Callable[[], None]) -> None:
        """What ends the process (gracefully) once the drain is done."""
        self._stop = stop

    def terminate(self) -> None:
        """SIGTERM: drain, then stop."""
        logger.info("SIGTERM: draining for up to %g s, then stopping", self.timeout_s)
        self.begin()

    def begin(self) -> bool:
        """Start draining; False when already draining (idempotent)."""
        if self._task is not None:
            return False
        self.readiness.draining = True
        self._task = asyncio.create_task(self._run(), name="drain")
        return True

    def live_rooms(self) -> int:
        return len(self.hub.drain.live_rooms()) if self.hub is not None else 0

    async def _run(self) -> None:
        hub = self.hub
        try:
            if hub is not None:
                await hub.drain.start(self.timeout_s)
        except Exception:
            logger.exception("drain failed; stopping anyway")
        if self._stop is not None:
            self._stop()

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


DRAIN = web.AppKey("drain", DrainControl)
