"""How much of each track a subscriber gets: its bandwidth estimate shared out.

A pure function (:func:`allocate`) the SFU runs per subscriber every
:data:`INTERVAL` (:mod:`media.adaptation`), in the spirit of LiveKit's stream
allocator and Jitsi's bandwidth allocator:

- audio first: its bit rate comes off the estimate before any video;
- then video, screen shares before cameras, in rounds: every track's lowest
  layer before any track's second, every second before any third ("lower
  layers for everyone before higher layers for anyone");
- never above a track's cap (what the subscriber renders, or a hidden tile:
  no video at all);
- when even a track's lowest layer does not fit, its video is paused
  (:data:`PAUSED`); audio is never paused;
- hysteresis so layers don't flap: going up to a layer (or resuming) needs
  the estimate to cover it with a margin (:data:`UP_MARGIN`,
  :data:`RESUME_MARGIN`), keeping what a track has only needs it to fit;
- a paused track resumes on its lowest layer, whatever the estimate: that
  keyframe is the smallest, so the picture comes back soonest (after an
  outage the publisher's own estimate is low and paces a large keyframe out
  over seconds); the next allocations move it up as usual.

Bit rates are measured per layer on the publisher side
(:attr:`media.layer.Layer.cost`); only layers that are arriving are
offered.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

#: How often each subscriber's allocation runs (s).
INTERVAL = 0.5
#: Share of the estimate given out (the rest absorbs bursts and RTCP).
HEADROOM = 0.9
#: An up-switch needs the estimate to cover its cost times this.
UP_MARGIN = 1.2
#: A paused track resumes when its lowest layer fits this many times over.
RESUME_MARGIN = 1.4
#: The cost assumed for a layer whose bit rate was not measured yet (bit/s).
UNMEASURED = 150_000.0
#: A track allocated this gets no video.
PAUSED = -1


@dataclass(frozen=True, slots=True)
class Demand:
    """One track a subscriber receives, as the allocator sees it."""

    key: Hashable
    kind: str  # "audio" or "video"
    layers: Sequence[tuple[int, float]]  # (layer index, bit/s) of the arriving layers, lowest first
    screen: bool = False
    cap: int | None = None  # highest layer index wanted; PAUSED: none (a hidden tile)
    current: int | None = None  # the layer index it has now; PAUSED if paused


def allocate(estimate: float | None, demands: Sequence[Demand]) -> dict[Hashable, int]:
    """Layer index per video track (:data:`PAUSED`: none); audio tracks are not listed.

    ``estimate`` is the subscriber's available downlink (bit/s); None (no
    estimate yet) gives every track the highest layer its cap allows.
    """
    video = [d for d in demands if d.kind == "video"]
    out: dict[Hashable, int] = {}
    if estimate is None:
        for d in video:
            allowed = _allowed(d)
            out[d.key] = allowed[-1][0] if allowed else PAUSED
        return out
    budget = estimate * HEADROOM
    for d in demands:
        if d.kind == "audio":
            budget -= sum(rate for _, rate in d.layers[:1])
    # Screen shares first, then cameras, each group in the order given.
    ordered = sorted(video, key=lambda d: not d.screen)
    levels: dict[Hashable, int] = {}  # position in the track's allowed layers
    allowed_of = {d.key: _allowed(d) for d in ordered}
    for d in ordered:
        allowed = allowed_of[d.key]
        if not allowed:
            out[d.key] = PAUSED
            continue
        cost = _cost(allowed[0][1])
        margin = RESUME_MARGIN if d.current == PAUSED else 1.0
        if cost * margin <= budget:
            budget -= cost
            levels[d.key] = 0
        else:
            out[d.key] = PAUSED
    level = 1
    while True:
        raised = False
        # Within a round, a track keeping the layer it has goes before one moving up
        # to it (screens still first): otherwise two tracks whose next layers do not
        # both fit would swap it at every allocation.
        for d in sorted(ordered, key=lambda d: (not d.screen, not _holds(d, level))):
            allowed = allowed_of[d.key]
            if levels.get(d.key) != level - 1 or level >= len(allowed) or d.current == PAUSED:
                continue
            index, rate = allowed[level]
            delta = _cost(rate) - _cost(allowed[level - 1][1])
            margin = 1.0 if d.current is not None and index <= d.current else UP_MARGIN
            if delta * margin <= budget:
                budget -= delta
                levels[d.key] = level
                raised = True
        if not raised:
            break
        level += 1
    for key, position in levels.items():
        out[key] = allowed_of[key][position][0]
    return out


def _holds(d: Demand, level: int) -> bool:
    """Whether ``d`` has (at least) the ``level``-th of its allowed layers now."""
    allowed = _allowed(d)
    if d.current is None or d.current == PAUSED or level >= len(allowed):
        return False
    return allowed[level][0] <= d.current


def _allowed(d: Demand) -> list[tuple[int, float]]:
    if d.cap == PAUSED:
        return []
    return [(i, r) for i, r in d.layers if d.cap is None or i <= d.cap] or list(d.layers[:1])


def _cost(rate: float) -> float:
    return rate if rate > 0 else UNMEASURED
