"""Pacing what one subscriber connection is sent (``media._udpsend.Pacer``, media/_pacer.c).

The SFU forwards each frame as it arrives, in one burst per stream; a
keyframe is several frames' worth at once. On a subscriber link slower than
those bursts they queue at the link's bottleneck, and a bottleneck whose
queue is full drops them: after the estimate drops, the keyframe of the
layer just switched to is what gets dropped, and the picture freezes until
the next one (measured on a 400 kbit/s shaper with a 300 ms queue: freezes of
1.5-4 s after the down-switch). With a pacer the queue is the SFU's: every
stream of the connection, media, repairs and probe padding alike, leaves in
the order it was numbered at no more than :data:`FACTOR` times the send-side
estimate, so the link's queue stays short. Both count a datagram as the link
does, with its IP and UDP headers (``media.sendlog.TRANSPORT_OVERHEAD``).

:class:`Pacing` owns one connection's pacer and the task that drains it
every :data:`TICK` seconds while something waits (woken by the pacer when
its queue stops being empty: an idle connection costs no wake-ups). The rate
follows the estimate (:meth:`Pacing.set_estimate`, from the adaptation's
every allocation) and a probe cluster raises it to its own rate while it
runs (:meth:`Pacing.boost`). Without an estimate (no transport-wide
feedback yet, or none negotiated) nothing is paced. The pure-Python fan-out
(where the C extension is not built) is not paced.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from .udpout import _udpsend

logger = logging.getLogger(__name__)

#: The pace: this many times the estimate. Above 1, so that a link the
#: estimate underrates still gets its bursts a little faster than the
#: allocation fills it (the allocation gives out 0.9 of the estimate); not far
#: above, or a keyframe still leaves faster than a bottleneck at the estimate
#: drains it.
FACTOR = 1.25
#: The pace for a while after the estimate dropped (the adaptation says when):
#: the estimate is then what the link was just measured to carry (BETA of what
#: arrived at the overuse, media/gcc.py), and a pace above it fills the
#: bottleneck's queue again with every keyframe, until the queue is full all
#: the time and drops media and probes alike (measured behind a 400 kbit/s
#: shaper: at 1.25x the pacer ran at 1.1-1.2x the link after the switch, and a
#: probe 5 s later lost 11 of its 29 packets and froze the video).
CAREFUL_FACTOR = 1.0
#: How often a connection with datagrams waiting is drained (s).
TICK = 0.005


class Pacing:
    """One subscriber connection's pacer and the task draining it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.pacer: Any = _udpsend.Pacer() if _udpsend is not None else None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        if self.pacer is not None:
            self.pacer.on_queued = self._wake.set
            self._task = asyncio.get_running_loop().create_task(
                self._drain(), name=f"pacing {name}"
            )

    def __repr__(self) -> str:
        return f"Pacing({self.name})"

    def attach(self, stream: Any) -> None:
        """Send ``stream`` (a subscriber stream's down) through this connection's pacer."""
        if self.pacer is not None and hasattr(stream, "pacer"):
            stream.pacer = self.pacer

    def set_estimate(self, estimate: float | None, *, careful: bool = False) -> None:
        """Pace at :data:`FACTOR` times ``estimate`` (bit/s), :data:`CAREFUL_FACTOR`
        times it if ``careful`` (the estimate dropped lately); None: no pacing."""
        if self.pacer is not None:
            factor = CAREFUL_FACTOR if careful else FACTOR
            self.pacer.rate = 0.0 if estimate is None else factor * estimate

    def boost(self, rate: float) -> None:
        """Pace at ``rate`` at least, while a probe cluster runs; 0 ends it."""
        if self.pacer is not None:
            self.pacer.boost = max(0.0, rate)

    async def _drain(self) -> None:
        pacer = self.pacer
        while True:
            if pacer.drain():
                await asyncio.sleep(TICK)  # the pacing period: more is due then
                continue
            await self._wake.wait()  # nothing waits: until something does
            self._wake.clear()

    async def close(self) -> None:
        """Stop the task and send what still waits (idempotent)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.pacer is not None:
            self.pacer.close()
