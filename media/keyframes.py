"""Rate-limited keyframe requests towards one publisher track.

Requests closer together than ``min_interval`` are deferred and coalesced into
one PLI sent when the interval has passed, never dropped: every requester (a
burst of joiners, say) sees a PLI sent at or after its own request, so each
of them gets a keyframe soon after.

A request made before the track's first packet (no SSRC to address a PLI
to) is retried every ``NO_MEDIA_RETRY`` seconds until media arrives, at most
``NO_MEDIA_RETRIES`` times: the publisher's first frame is a keyframe, but
it may never reach the SFU (a sender that starts encoding before its
connection is up, as aiortc's does, loses it), and then a subscriber waiting
for a keyframe would wait for the publisher's next periodic one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

logger = logging.getLogger(__name__)

NO_MEDIA_RETRY = 0.25  # s between attempts while the track has no media yet
NO_MEDIA_RETRIES = 80  # 20 s: ICE and DTLS of a busy server can take seconds


class KeyframeRequester:
    """Coalesces keyframe requests into at most one PLI per ``min_interval``."""

    def __init__(
        self,
        send_pli: Callable[[], Awaitable[bool]],
        min_interval: float,
        on_sent: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
        name: str = "",
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._send_pli = send_pli
        self._min_interval = min_interval
        self._on_sent = on_sent
        self._clock = clock
        self._sleep = sleep  # with ``clock``, tests drive the pacing by hand
        self._name = name
        self._last_sent: float | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.sent = 0
        self.coalesced = 0

    @property
    def pending(self) -> bool:
        return self._task is not None and not self._task.done()

    def request(self) -> None:
        """Ask for a keyframe; sent now, or once the interval has passed."""
        if self._closed:
            return
        if self.pending:
            self.coalesced += 1  # the scheduled PLI goes out after this request
            return
        delay = 0.0
        if self._last_sent is not None:
            delay = max(0.0, self._last_sent + self._min_interval - self._clock())
        self._task = asyncio.get_running_loop().create_task(
            self._send_after(delay), name=f"pli {self._name}"
        )

    async def _send_after(self, delay: float) -> None:
        try:
            if delay > 0:
                await self._sleep(delay)
            for _ in range(NO_MEDIA_RETRIES):
                self._last_sent = self._clock()
                if await self._send_pli():
                    self.sent += 1
                    self._on_sent()
                    return
                # No media seen yet: not rate-limited, ask again soon.
                self._last_sent = None
                await self._sleep(NO_MEDIA_RETRY)
        except asyncio.CancelledError:
            raise
        except ConnectionError:
            pass
        except Exception:
            logger.exception("KeyframeRequester(%s) failed to send a PLI", self._name)

    async def close(self) -> None:
        """Cancel a deferred PLI (idempotent)."""
        self._closed = True
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
