"""Probe clusters: padding that tests whether a subscriber's link carries more.

A send-side estimate cannot grow far past what the subscriber is sent (it
is only as good as the traffic that tested it), so a subscriber moved down a
layer would stay down. When the adaptation wants a step up that the
estimate does not cover, :class:`Prober` sends one cluster: for
:data:`DURATION` seconds, padding on top of the media so that the whole
connection runs at the target rate, paced every :data:`TICK` seconds against
the bytes the connection actually sent (media as it came, and padding). The
padding is RTX copies of the newest video packets
(:meth:`media.fastsend.FastRtp.pad`), numbered like everything else on the
connection; :class:`media.transportcc.TransportCc` judges what the
subscriber's feedback says of them. One cluster at a time per subscriber.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from .metrics import MediaMetrics
from .transportcc import TransportCc

logger = logging.getLogger(__name__)

#: How long one cluster lasts and how often it sends (s). Short: what it sends
#: above a link's rate waits in the link's queue, and a long cluster overflows
#: it and drops media (0.3 s at 1.8x a 400 kbit/s shaper froze video for 3-4 s;
#: 0.2 s at 1.5x, what follows a drop, adds 100 ms). Not shorter: a receiver's
#: own stalls (a busy browser stamping arrivals late) would look like a queue
#: (0.1 s clusters failed on an unshaped link in CI).
DURATION = 0.2
TICK = 0.01
#: A cluster whose connection sent less than this share of its target (media and
#: padding, nothing cached to copy) is not judged: it did not test that rate.
MIN_REACHED = 0.8
#: Most padding one tick sends (in ticks' worth of the target): a stall of the
#: event loop is not made up for in one burst.
MAX_CATCH_UP = 3
#: Highest probe rate (bit/s): well above any sane layer stack.
MAX_TARGET = 20_000_000.0


class Prober:
    """Sends probe clusters for one subscriber connection."""

    def __init__(
        self,
        name: str,
        transport: TransportCc,
        pad: Callable[[int], int],
        *,
        metrics: MediaMetrics,
        boost: Callable[[float], None] = lambda rate: None,
    ) -> None:
        self.name = name
        self._transport = transport
        self._pad = pad
        self._boost = boost  # the connection's pacer runs at least at this meanwhile
        self._metrics = metrics
        self._task: asyncio.Task[None] | None = None
        self.clusters = 0
        self.bytes_sent = 0

    def __repr__(self) -> str:
        return f"Prober({self.name})"

    @property
    def busy(self) -> bool:
        return self._task is not None and not self._task.done()

    def probe(self, target: float, sending: float) -> bool:
        """Start a cluster at ``target`` bit/s while ``sending`` bit/s of media flow;
        False if one is running or there is nothing to add."""
        target = min(target, MAX_TARGET)
        if self.busy or not self._transport.negotiated or target <= sending:
            return False
        self._task = asyncio.get_running_loop().create_task(
            self._run(target), name=f"probe {self.name}"
        )
        return True

    async def _run(self, target: float) -> None:
        """Pad the whole connection up to ``target``: what it sent so far (media as it
        came, padding) against the target's share of the time gone, every tick."""
        transport = self._transport
        log = transport.log
        transport.begin_cluster(target)
        self._boost(target)
        start_bytes = log.bytes
        sent = 0
        try:
            loop = asyncio.get_running_loop()
            start = loop.time()
            next_at = start
            while (elapsed := loop.time() - start) < DURATION:
                due = target * min(elapsed + TICK, DURATION) / 8 - (log.bytes - start_bytes)
                owed = min(due, MAX_CATCH_UP * target * TICK / 8)
                if owed > 0:
                    first = log.next
                    sent += self._pad(int(owed))
                    transport.note_padding(first, log.next)
                next_at += TICK
                await asyncio.sleep(max(0.0, next_at - loop.time()))
        except asyncio.CancelledError:
            pass
        except Exception:
            logger.exception("%r: probe failed", self)
        finally:
            self._boost(0.0)
            # A cluster that could not reach its rate (nothing cached to copy yet) says
            # nothing of the link: dropped, not judged.
            reached = (log.bytes - start_bytes) * 8 / DURATION
            judge = reached >= MIN_REACHED * target
            if not judge:
                logger.info(
                    "%r: cluster at %.0f kbit/s sent only %.0f kbit/s (padding %d B): not judged",
                    self,
                    target / 1000,
                    reached / 1000,
                    sent,
                )
            transport.end_cluster(judge=judge, padded=sent)
            self.clusters += 1
            self.bytes_sent += sent
            self._metrics.probe_bytes(sent)

    async def close(self) -> None:
        """Stop a running cluster (idempotent)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
