"""Per subscriber: its bandwidth estimate, the allocation, and telling the client.

One :class:`SubscriberAdaptation` per participant that receives. Every
:data:`media.allocator.INTERVAL` it reads the subscriber's estimate of its
downlink and shares it out over the tracks it receives
(:func:`media.allocator.allocate`), then applies the result: each video
track's highest layer for this subscriber (:meth:`media.forwarder.UpTrack.set_max_layer`),
or no video at all (paused). When what a track gets changes, the
subscriber is sent a ``quality`` message listing every track it receives
(docs/protocol.md).

The estimate is the subscriber's REMB (what Chrome sends when the subscribe
offer carries ``goog-remb`` and abs-send-time, as aiortc's does), lowered
when its receiver reports show loss (loss-based control as in GCC: above
:data:`LOSSY` fraction lost, down by half the loss). Without a recent REMB
there is no limit. Send-side estimation from transport-wide feedback is the
next step (the subscribe offer does not offer ``transport-cc`` yet).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from .allocator import INTERVAL, PAUSED, Demand, allocate
from .metrics import MediaMetrics

if TYPE_CHECKING:
    from .feedback import SubscriberFeedback
    from .subscription import Slot

logger = logging.getLogger(__name__)

#: A REMB older than this is not an estimate any more (s).
REMB_MAX_AGE = 5.0
#: Receiver reports with more than this fraction lost lower the estimate.
LOSSY = 0.1

Message = dict[str, Any]


class SubscriberAdaptation:
    """Runs the allocation for one subscriber and says what it receives."""

    def __init__(
        self,
        name: str,
        feedback: SubscriberFeedback,
        slots: Callable[[], Sequence[Slot]],
        send: Callable[[Message], Awaitable[None]],
        *,
        metrics: MediaMetrics,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self._feedback = feedback
        self._slots = slots
        self._send = send
        self._metrics = metrics
        self._clock = clock
        self._caps: dict[str, int | None] = {}  # mid -> cap from the client's preferences
        self._told: list[dict[str, Any]] | None = None
        self._task: asyncio.Task[None] | None = None
        self.estimate: float | None = None

    def __repr__(self) -> str:
        return f"SubscriberAdaptation({self.name})"

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._loop(), name=f"adaptation {self.name}"
            )

    def set_cap(self, mid: str, cap: int | None) -> None:
        """The highest layer the subscriber wants of the track on ``mid`` (PAUSED: none)."""
        self._caps[mid] = cap

    def current_estimate(self) -> float | None:
        """The subscriber's downlink estimate now (bit/s), None if unknown."""
        feedback = self._feedback
        remb, at = feedback.remb, feedback.remb_at
        if remb is None or at is None or self._clock() - at > REMB_MAX_AGE:
            return None
        estimate = float(remb)
        lost = max(
            (
                slot.fast.last_report.fraction_lost
                for slot in self._slots()
                if slot.fast.last_report is not None
            ),
            default=0.0,
        )
        if lost > LOSSY:
            estimate *= 1 - lost / 2
        return estimate

    async def tick(self) -> None:
        """One allocation: apply it, and tell the subscriber if what it gets changed."""
        self.estimate = self.current_estimate()
        demands: list[Demand] = []
        carried: dict[str, Slot] = {}
        for slot in self._slots():
            up = slot.source
            if up is None or up.ended:
                continue
            if slot.transceiver.mid is None:
                continue  # not offered yet
            mid = str(slot.transceiver.mid)
            current: int | None = None
            if up.paused(slot.down):
                current = PAUSED
            else:
                layer = up.layer_of(slot.down)
                current = up.layers().index(layer) if layer in up.layers() else None
            demands.append(
                Demand(
                    key=mid,
                    kind=up.kind,
                    layers=up.arriving_layers(),
                    screen=up.is_screen,
                    cap=self._caps.get(mid),
                    current=current,
                )
            )
            carried[mid] = slot
        result = allocate(self.estimate, demands)
        for key, index in result.items():
            slot = carried[str(key)]
            up = slot.source
            if up is None:
                continue
            layers = up.layers()
            # The top layer needs no cap: a layer added later may be taken then.
            cap = None if index != PAUSED and index >= len(layers) - 1 else index
            up.set_max_layer(slot.down, cap)
        told = [self._describe(mid, carried[mid]) for mid in sorted(carried)]
        if told != self._told:
            self._told = told
            await self._send({"type": "quality", "tracks": told})

    def _describe(self, mid: str, slot: Slot) -> dict[str, Any]:
        up = slot.source
        assert up is not None
        layer = up.layer_of(slot.down)
        return {
            "mid": mid,
            "participant_id": up.participant_id,
            "kind": up.kind,
            "layer": layer.rid if layer is not None else None,
            "paused": up.paused(slot.down),
        }

    async def _loop(self) -> None:
        try:
            while True:
                await asyncio.sleep(INTERVAL)
                try:
                    await self.tick()
                except Exception:  # a bug must not end adaptation for good
                    logger.exception("%r: allocation failed", self)
        except asyncio.CancelledError:
            pass

    async def close(self) -> None:
        """Stop allocating (idempotent)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
