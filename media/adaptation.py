"""Per subscriber: its bandwidth estimate, the allocation, and telling the client.

One :class:`SubscriberAdaptation` per participant that receives. Every
:data:`media.allocator.INTERVAL` it reads the subscriber's estimate of its
downlink and shares it out over the tracks it receives
(:func:`media.allocator.allocate`), then applies the result: each video
track's highest layer for this subscriber (:meth:`media.forwarder.UpTrack.set_max_layer`),
or no video at all (paused). When what a track gets changes, the
subscriber is sent a ``quality`` message listing every track it receives
(docs/protocol.md).

The estimate is the send side's (media/transportcc.py, media/gcc.py: GCC
on the subscriber's transport-wide feedback) when the subscriber answered
``transport-cc``, as Chrome does. A step up that estimate does not cover is
first proven by a probe cluster (media/probe.py): padding at the rate the
step needs; the allocation takes the step once the estimate has risen.
Without transport-wide feedback the estimate is the subscriber's REMB, lowered
when its receiver reports show loss (loss-based control as in GCC: above
:data:`LOSSY` fraction lost, down by half the loss), and going back up is
tried one step at a time (:meth:`SubscriberAdaptation._budget`). Without
either there is no limit. An estimate under :data:`CONGESTED` of what the
subscriber is sent moves it down (or pauses its video). Only
simulcast video is adapted to the estimate: a track with one encoding is
always sent (there is nothing lower to move to, and pausing it on an
estimate that cannot recover without probing would stall it), its bit rate
taken off the estimate first, unless the client hides its tile. The
client's ``track_settings`` cap each track: a hidden tile gets no video, a
small one no layer larger than it (layer sizes read from the VP8
keyframes).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import TYPE_CHECKING, Any

from .allocator import (
    HEADROOM,
    INTERVAL,
    PAUSED,
    RESUME_MARGIN,
    UNMEASURED,
    UP_MARGIN,
    Demand,
    allocate,
)
from .gcc import Usage
from .metrics import MediaMetrics
from .transportcc import PROBE_HELD

if TYPE_CHECKING:
    from .feedback import SubscriberFeedback
    from .forwarder import UpTrack
    from .pacing import Pacing
    from .probe import Prober
    from .subscription import Slot
    from .transportcc import TransportCc

logger = logging.getLogger(__name__)

#: A REMB older than this is not an estimate any more (s).
REMB_MAX_AGE = 5.0
#: Receiver reports with more than this fraction lost lower the estimate.
LOSSY = 0.1
#: Receiver reports with at most this fraction lost (and newer than
#: LOSS_FREE_AGE s) show the link carries what is sent: a low estimate is then
#: not congestion ...
LOSS_FREE = 0.02
LOSS_FREE_AGE = 2.5
#: ... and made at least this long after the last change of what is sent (s).
SETTLE = 0.5
#: An estimate under this share of what the subscriber is sent means congestion
#: (a receiver's estimate lags behind a publisher ramping up, and on overuse
#: Chrome's drops to ~0.85 of what actually arrives: far below what is sent).
CONGESTED = 0.7
#: Seconds of a steady estimate before one step up is tried ...
UP_AFTER = 2.0
#: ... doubled after each congestion (a failed try or not), up to this ...
MAX_UP_AFTER = 8.0
#: ... and back to UP_AFTER when the estimate rises this much above the one
#: of the last failed try (the link got better).
RECOVERED = 1.25
#: Congestion within this many seconds of a step up means it did not fit.
TRIAL = 2.0
#: A track is paused only after its lowest layer has not fit for this long (s),
#: while the receiver reports at least this fraction lost.
PAUSE_AFTER = 3.0
PAUSE_LOSS = 0.2
#: A track moved down is not moved up again for this long (s).
UP_HOLD = 4.0
#: A layer this share of the rendered size or more is large enough for it.
SIZE_SLACK = 0.9
#: Most views kept per subscriber (track_settings entries, by mid).
MAX_VIEWS = 64
#: A probe aims this much above what it tests for; one that shows at least
#: PROBE_HELD of its target counts as a success (media.transportcc), and the
#: next may follow PROBE_AGAIN seconds later.
PROBE_OVERSHOOT = 1.1
PROBE_AGAIN = 1.0
#: The longest wait for a probe's outcome (judged once its feedback came in)
#: before another may start (s).
PROBE_OUTCOME_WAIT = 3.0
#: No probe this long after the send-side estimate dropped (s): the link just
#: showed its limit, its queue is still draining, and a cluster at twice the
#: estimate would overflow it and freeze the video that was just moved down
#: (nothing moves up within UP_HOLD of that anyway).
PROBE_QUIET = 4.0
#: A probe tests twice the estimate, or only this many times it within
#: PROBE_CAREFUL seconds of a drop: a cluster over the link's rate queues there
#: (a 0.3 s cluster at 2x fills 300 ms of a shaper's queue and drops media).
PROBE_GROWTH = 2.0
PROBE_GROWTH_CAREFUL = 1.5
PROBE_CAREFUL = 30.0

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
        transport: TransportCc | None = None,
        prober: Prober | None = None,
        pacing: Pacing | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self._pacing = pacing
        self._feedback = feedback
        self._transport = transport
        self._prober = prober
        self._send_side = False  # the estimate is the send side's (transport-cc)
        self._probe_outcome: tuple[float | None, float] | None = None
        self._probe_at = 0.0  # no probe before this (monotonic s)
        self._dropped_at = -PROBE_CAREFUL  # when the send-side estimate last dropped
        self._wake = asyncio.Event()  # an allocation wanted before the next tick
        if transport is not None:
            transport.on_probe = self._probed
            transport.on_drop = self._dropped
        self._slots = slots
        self._send = send
        self._metrics = metrics
        self._clock = clock
        # mid -> (width, height, visible) the client shows it at (track_settings)
        self._views: dict[str, tuple[int | None, int | None, bool]] = {}
        self._told: list[dict[str, Any]] | None = None
        self._task: asyncio.Task[None] | None = None
        self.estimate: float | None = None
        #: What media this subscriber is sent (bit/s): the larger of what the last
        #: allocation gave out and what was still sent then (a switch down waits
        #: for a keyframe); its repairs get the rest of the estimate.
        self.media_rate = 0.0
        self._steady_since = clock()
        self._up_after = UP_AFTER
        self._trial_until: float | None = None
        self._failed_at: float | None = None  # the estimate at the last congestion
        self._carried = False  # the latest receiver reports show no loss
        self._lost: float | None = None  # the most lost in fresh receiver reports
        self._pause_since: dict[Hashable, float] = {}  # mid -> since when it would pause
        self._down_at: dict[Hashable, float] = {}  # mid -> when it last moved down
        self._given: dict[str, int] = {}  # mid -> the layer the last allocation gave it
        self._shape: list[Any] | None = None  # what was carried at the last idle tick

    def __repr__(self) -> str:
        return f"SubscriberAdaptation({self.name})"

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._loop(), name=f"adaptation {self.name}"
            )

    def set_view(self, mid: str, width: int | None, height: int | None, visible: bool) -> None:
        """How the subscriber shows the track on ``mid``: a hidden tile gets no video,
        a small one no layer larger than it needs (LiveKit's adaptive stream)."""
        if len(self._views) >= MAX_VIEWS and mid not in self._views:
            self._views.clear()  # bounded: a client can name any mid
        self._views[mid] = (width, height, visible)

    def current_estimate(self, sending: float = 0.0) -> float | None:
        """The subscriber's downlink estimate now (bit/s), None if unknown.

        Its REMB, lowered when its receiver reports show loss (GCC's loss-based
        control). Without a REMB, loss alone. Also notes whether the reports
        newer than :data:`LOSS_FREE_AGE` show no loss at what it is sent
        (``sending``): then the link evidently carries that much, and a low
        estimate (a receiver's delay-based estimate undershoots for a while
        after an overshoot) is not congestion.
        """
        feedback = self._feedback
        remb, at = feedback.remb, feedback.remb_at
        now = self._clock()
        fresh = [
            slot.fast.last_report.fraction_lost
            for slot in self._slots()
            if slot.fast.last_report is not None
            and slot.fast.last_report_at is not None
            and now - slot.fast.last_report_at <= LOSS_FREE_AGE
        ]
        lost = max(fresh, default=0.0)
        self._lost = lost if fresh else None
        # Only reports about what is sent now (made after the last change) vouch for it.
        settled = [
            slot.fast.last_report.fraction_lost
            for slot in self._slots()
            if slot.fast.last_report is not None
            and slot.fast.last_report_at is not None
            and slot.fast.last_report_at > self._steady_since + SETTLE
            and now - slot.fast.last_report_at <= LOSS_FREE_AGE
        ]
        self._carried = bool(settled) and max(settled) <= LOSS_FREE and sending > 0
        send_side = self._transport.estimate if self._transport is not None else None
        self._send_side = send_side is not None
        if send_side is not None:
            return send_side  # loss is in it already (transport-wide feedback)
        if remb is None or at is None or now - at > REMB_MAX_AGE:
            # No REMB: loss alone says what does not fit.
            return sending * (1 - lost / 2) if lost > LOSSY and sending > 0 else None
        estimate = float(remb)
        if lost > LOSSY:
            estimate *= 1 - lost / 2
        return estimate

    async def tick(self) -> None:
        """One allocation: apply it, and tell the subscriber if what it gets changed."""
        slots = self._slots()
        if not self._views and not any(
            slot.source is not None and len(slot.source.rids) > 1 for slot in slots
        ):
            # Nothing to adapt (no simulcast, no tile settings): only say what is sent,
            # and keep the estimate the pacer and the repairs go by current.
            self._follow_estimate(slots)
            shape = [(slot.transceiver.mid, slot.source) for slot in slots]
            if shape == self._shape:
                return
            self._shape = shape
        else:
            self._shape = None
        now = self._clock()
        demands: list[Demand] = []
        carried: dict[str, Slot] = {}
        sending = 0.0  # what this subscriber gets now (bit/s)
        for slot in self._slots():
            up = slot.source
            if up is None or up.ended or slot.transceiver.mid is None:
                continue  # nothing carried, or not offered yet
            mid = str(slot.transceiver.mid)
            layers = up.arriving_layers()
            rates = dict(layers)
            layer = up.target_of(slot.down)  # a switch asked for counts as made
            index = up.index_of(layer) if layer is not None else None
            if len(up.layers()) < 2:
                # One encoding (audio, or video without simulcast): sent unless its
                # tile is hidden, its rate taken off the estimate first.
                hidden = up.kind == "video" and self._cap(mid, up) == PAUSED
                if hidden != up.paused(slot.down):
                    up.set_max_layer(slot.down, PAUSED if hidden else None)
                if not hidden:
                    sending += rates.get(0, 0.0)
                    demands.append(Demand(key=mid, kind="audio", layers=layers[:1]))
                carried[mid] = slot
                continue
            # What the last allocation gave it, even while that layer is still on its
            # way (a layer dynacast stopped takes a while to come back): otherwise
            # two tracks would take turns at a layer neither has received yet.
            given = self._given.get(mid)
            if given is not None and given != PAUSED and given not in rates:
                given = None  # that layer is gone
            current: int | None = PAUSED if up.paused(slot.down) else given
            if current is None:
                current = index
            if current is not None and current != PAUSED:
                sending += rates.get(current, 0.0)
            demands.append(
                Demand(
                    key=mid,
                    kind=up.kind,
                    layers=layers,
                    screen=up.is_screen,
                    cap=self._cap(mid, up),
                    current=current,
                )
            )
            carried[mid] = slot
        remb = self.estimate = self.current_estimate(sending)
        if remb is not None:
            self._metrics.subscriber_estimate(remb)
        self._pace(remb, now)
        result = allocate(self._budget(remb, sending, demands, now), demands)
        self._hold_pauses(result, demands, now)
        self._hold_ups(result, demands, now)
        self._given = {str(k): v for k, v in result.items()}
        allocated = sum(dict(d.layers).get(result.get(d.key, PAUSED), 0.0) for d in demands)
        self.media_rate = max(sending, allocated)
        changed = False
        for key, index in result.items():
            slot = carried[str(key)]
            up = slot.source
            if up is None:
                continue
            before = PAUSED if up.paused(slot.down) else up.target_of(slot.down)
            # Without an estimate the top layer needs no cap (a layer that starts
            # later may be taken then); with one, the allocation is the cap.
            top = index != PAUSED and index >= up.top_index
            cap = None if top and self.estimate is None else index
            # More is sent than the link carries: a move down cannot wait.
            urgent = self.estimate is not None and sending > self.estimate
            up.set_max_layer(slot.down, cap, urgent=urgent)
            target = PAUSED if index == PAUSED else up.layer_at(index)
            changed |= target is not before
        if changed:
            self._steady_since = now
            logger.info(
                "%r: estimate %s, sending %.0f kbit/s: %s (layers %s)",
                self,
                "none" if remb is None else f"{remb / 1000:.0f} kbit/s",
                sending / 1000,
                {str(k): v for k, v in result.items()},
                _describe_demands(demands),
            )
        told = [self._describe(mid, carried[mid]) for mid in sorted(carried)]
        if told != self._told:
            self._told = told
            await self._send({"type": "quality", "tracks": told})

    def _hold_pauses(self, result: dict[Hashable, int], demands: list[Demand], now: float) -> None:
        """Pause a track only when its lowest layer has not fit for :data:`PAUSE_AFTER`
        seconds and its receiver reports (if any) lose :data:`PAUSE_LOSS` or more: a receiver's
        estimate drops below its real capacity after an overshoot and would pause
        video that its lowest layer could have carried."""
        pressed = set()
        for d in demands:
            if d.kind != "video" or d.cap == PAUSED or d.current == PAUSED or not d.layers:
                continue
            if result.get(d.key) != PAUSED:
                continue
            pressed.add(d.key)
            since = self._pause_since.setdefault(d.key, now)
            lost = self._lost
            if now - since < PAUSE_AFTER or (lost is not None and lost < PAUSE_LOSS):
                result[d.key] = d.layers[0][0]  # the lowest layer meanwhile
        for key in list(self._pause_since):
            if key not in pressed:
                del self._pause_since[key]

    def _hold_ups(self, result: dict[Hashable, int], demands: list[Demand], now: float) -> None:
        """A track moved down goes back up no sooner than :data:`UP_HOLD` seconds later:
        layer rates swing (keyframes, the publisher's own adaptation), and with a
        budget that fits one more top layer but not two, two tracks would take it
        from each other at every allocation."""
        for d in demands:
            if d.kind != "video" or d.current is None or d.key not in result:
                continue
            new, current = result[d.key], d.current
            if current == PAUSED or new == PAUSED:
                continue  # pausing and resuming have their own hold and margin
            allowed = [i for i, _ in d.layers if d.cap is None or i <= d.cap]
            if new < current and allowed and new < allowed[-1]:
                self._down_at[d.key] = now  # down for lack of budget, not for its view
            elif new > current and now - self._down_at.get(d.key, -UP_HOLD) < UP_HOLD:
                result[d.key] = current
        if len(self._down_at) > MAX_VIEWS:
            self._down_at.clear()

    def _budget(
        self, remb: float | None, sending: float, demands: list[Demand], now: float
    ) -> float | None:
        """What the allocation may give out: the estimate, or a trial step above it.

        A receiver's estimate cannot rise far above what it receives (Chrome's
        REMB grows at most 1.5x the incoming rate), so a subscriber moved down
        would stay down. Without padding probes, the SFU probes by trying: after
        the estimate has been steady (no congestion) for ``up_after`` seconds,
        it allows one step up; congestion within :data:`TRIAL` seconds of it
        takes it back and doubles ``up_after`` (up to :data:`MAX_UP_AFTER`,
        back to :data:`UP_AFTER` once the estimate climbs :data:`RECOVERED`
        times above the one the step failed at).
        """
        if remb is None:
            return None
        if self._send_side:
            return self._probe_for(remb, sending, demands, now)
        if remb < CONGESTED * sending and not self._carried:
            if self._trial_until is not None and now <= self._trial_until:
                self._metrics.layer_probe(held=False)
            # Congestion (a failed step up or not): the next step up waits longer.
            self._up_after = min(MAX_UP_AFTER, self._up_after * 2)
            self._failed_at = remb
            self._trial_until = None
            self._steady_since = now
            return remb
        if self._trial_until is not None and now > self._trial_until:
            self._trial_until = None
            self._up_after = UP_AFTER  # the step held
            self._failed_at = None
            self._metrics.layer_probe(held=True)
        if self._failed_at is not None and remb > RECOVERED * self._failed_at:
            self._up_after = UP_AFTER  # the estimate climbed: try again soon
            self._failed_at = None
        # Not congested: at least what is sent now (a receiver's estimate trails it).
        budget = max(remb, sending / HEADROOM * 1.01)
        step = _next_step(demands)
        if step is not None and now - self._steady_since >= self._up_after:
            self._trial_until = now + TRIAL
            self._steady_since = now
            budget = max(budget, (sending + step) / HEADROOM * 1.01)
        return budget

    def _follow_estimate(self, slots: Sequence[Slot]) -> None:
        """A tick with nothing to allocate: every track is sent as it is, but the
        estimate still moves, and the pacer and the repair budget must move with it
        (paced at a stale estimate, the connection's queue grows while the estimate
        climbs, and repairs wait behind it until they are too late). Media no
        allocation sized leaves the repairs no share to compute: the estimate alone
        bounds them (``media_rate`` 0)."""
        sending = 0.0
        for slot in slots:
            up = slot.source
            if up is not None and not up.ended and not up.paused(slot.down):
                sending += dict(up.arriving_layers()).get(0, 0.0)
        estimate = self.estimate = self.current_estimate(sending)
        if estimate is not None:
            self._metrics.subscriber_estimate(estimate)
        self._pace(estimate, self._clock())
        self.media_rate = 0.0

    def _pace(self, estimate: float | None, now: float) -> None:
        """Pace the connection at the send side's estimate (a REMB receiver reads delay
        from abs-send-time, stamped before the pacer's queue, and would take that queue
        for the network's: not paced); carefully for :data:`PROBE_CAREFUL` seconds
        after the estimate dropped (media.pacing.CAREFUL_FACTOR: it is what the link
        was just measured to carry)."""
        if self._pacing is not None:
            self._pacing.set_estimate(
                estimate if self._send_side else None,
                careful=now - self._dropped_at < PROBE_CAREFUL,
            )

    def _dropped(self) -> None:
        """The send-side estimate fell: allocate now, and probe only once it settled."""
        now = self._clock()
        self._dropped_at = now
        self._probe_at = max(self._probe_at, now + PROBE_QUIET)
        self._wake.set()

    def _probed(self, rate: float | None, target: float) -> None:
        self._probe_outcome = (rate, target)

    def _probe_for(
        self, estimate: float, sending: float, demands: list[Demand], now: float
    ) -> float:
        """Send-side: the estimate is the budget. While it does not cover what the
        subscriber would take (every track at its top layer, within its view), probe
        clusters test more: at twice the estimate (1.5 times it for a while after a
        drop; the allocation takes the next step once the estimate covers it), and again
        :data:`PROBE_AGAIN` seconds after one that held, so the estimate climbs
        exponentially, as libwebrtc's probing does. One that falls short doubles the
        wait before the next (from :data:`UP_AFTER` up to :data:`MAX_UP_AFTER`);
        none while the estimator sees overuse, nor :data:`PROBE_QUIET` seconds
        after the estimate dropped."""
        outcome, self._probe_outcome = self._probe_outcome, None
        if outcome is not None:
            rate, target = outcome
            held = rate is not None and rate >= PROBE_HELD * target
            self._metrics.layer_probe(held=held)
            if held:
                self._up_after = UP_AFTER
                self._probe_at = now + PROBE_AGAIN
            else:
                self._probe_at = now + self._up_after
                self._up_after = min(MAX_UP_AFTER, self._up_after * 2)
        transport, prober = self._transport, self._prober
        if transport is None or prober is None or prober.busy or now < self._probe_at:
            return estimate
        if transport.estimator.usage is Usage.OVERUSING:
            self._probe_at = now + UP_AFTER  # congested: let it settle first
            return estimate
        wanted = _full_demand(demands)
        if wanted <= estimate * HEADROOM:
            return estimate
        careful = now - self._dropped_at < PROBE_CAREFUL
        growth = PROBE_GROWTH_CAREFUL if careful else PROBE_GROWTH
        target = min(wanted / HEADROOM, growth * estimate) * PROBE_OVERSHOOT
        if prober.probe(target, sending):
            # Its outcome (a few hundred ms after the cluster) sets the next time.
            self._probe_at = now + PROBE_OUTCOME_WAIT
        return estimate

    def _cap(self, mid: str, up: UpTrack) -> int | None:
        """The highest layer the subscriber's view of ``mid`` needs (PAUSED: hidden)."""
        view = self._views.get(mid)
        if view is None:
            return None
        width, height, visible = view
        if not visible:
            return PAUSED
        if not width and not height:
            return None
        for layer in up.layers():
            w, h = layer.size
            if not w or not h:
                return None  # a layer's size is not known yet: no cap
            if w >= (width or 0) * SIZE_SLACK and h >= (height or 0) * SIZE_SLACK:
                return up.index_of(layer)
        return None

    def _describe(self, mid: str, slot: Slot) -> dict[str, Any]:
        up = slot.source
        assert up is not None
        layer = up.layer_of(slot.down) or up.target_of(slot.down)
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
                # Every INTERVAL, or at once when the send-side estimate drops.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), INTERVAL)
                self._wake.clear()
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


def _describe_demands(demands: list[Demand]) -> str:
    """``mid: current [kbit/s per layer]`` of each track, for the allocation's log line."""
    return ", ".join(
        f"{d.key}: {d.current} {[round(rate / 1000) for _, rate in d.layers]}" for d in demands
    )


def _full_demand(demands: list[Demand]) -> float:
    """What every track at the top layer its view allows would take (bit/s)."""
    total = 0.0
    for d in demands:
        if d.cap == PAUSED or not d.layers:
            continue
        rates = [r if r > 0 else UNMEASURED for i, r in d.layers if d.cap is None or i <= d.cap]
        if rates:
            total += rates[-1]
    return total


def _next_step(demands: list[Demand]) -> float | None:
    """What the smallest raise any video track could take needs on top of what is
    sent (bit/s, with the allocation's margin); None: all at their top."""
    steps = []
    for d in demands:
        if d.kind != "video" or d.cap == PAUSED or not d.layers:
            continue
        rates = [
            (i, r if r > 0 else UNMEASURED) for i, r in d.layers if d.cap is None or i <= d.cap
        ]
        if not rates:
            continue
        if d.current is None or d.current == PAUSED:
            steps.append(rates[0][1] * RESUME_MARGIN)
            continue
        now = next((r for i, r in rates if i == d.current), 0.0)
        higher = [r for i, r in rates if i > d.current]
        if higher:
            steps.append((higher[0] - now) * UP_MARGIN)
    return min(steps) if steps else None
