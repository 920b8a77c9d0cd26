"""Time that moves only when a test says so, for code that takes its clock and its
sleep injected (the disconnect grace period, keyframe pacing): a negative ("nothing
happens before the time is up") is then shown without waiting the time out."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass


@dataclass
class Wait:
    """One ``sleep`` in progress: how long it asked for, when it is due, and its end."""

    seconds: float
    due: float
    done: asyncio.Future[None]


class ManualClock:
    """A monotonic clock (call it) and a ``sleep`` that ends only on :meth:`advance`."""

    def __init__(self, start: float = 0.0) -> None:
        self.now = start
        self.waits: list[Wait] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        wait = Wait(seconds, self.now + seconds, asyncio.get_running_loop().create_future())
        self.waits.append(wait)
        await wait.done

    def pending(self) -> list[Wait]:
        """The sleeps still waiting (neither over nor cancelled)."""
        return [wait for wait in self.waits if not wait.done.done()]

    def advance(self, seconds: float | None = None) -> None:
        """Move time on by ``seconds`` (None: past every sleep so far) and end the
        sleeps then due; a cancelled one stays cancelled."""
        if seconds is None:
            self.now = max([self.now, *(wait.due for wait in self.waits)])
        else:
            self.now += seconds
        for wait in self.pending():
            if wait.due <= self.now + 1e-9:
                wait.done.set_result(None)
