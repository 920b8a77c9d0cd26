"""Time from a downlink's bandwidth drop to the SFU's down-switch, and back up once lifted.

One simulcast publisher (three layers, :mod:`media.loadtest.simulcast`) and
one uncapped *watcher* stay in the room for the whole run; each trial is a
fresh receive-only subscriber whose downlink is shaped by the load
tester's cap (:class:`media.loadtest.netcap.ReceiveCap`: RTP arriving above
the rate waits in a bounded queue, then is dropped, as on a slow link; the
subscriber's transport-wide feedback shows the delay and the drops, its
receiver reports the drops as loss). Its cap is installed once
it receives video, lifted (everything passes) until it is on the top layer
and has held it for ``steady_s``; then, at a noted instant:

1. the cap is set (``cap_bps``, from a full bucket). The *down-switch* is
   the time until the first packet of a lower layer's keyframe arrives (the
   SFU switches layers at keyframes; :mod:`bench.simulcast.sniff` notes
   every keyframe start that gets through, a repaired one at its repair);
   the SFU's ``quality`` message naming the layer (sent at its next
   allocation tick after the switch) is noted too;
2. ``hold_s`` later, once the subscriber is on a lower layer again (the SFU
   tries steps up meanwhile, which the cap takes back), the cap is lifted:
   the *recovery* is the time until the first packet of a top-layer keyframe.

Every wait is bounded (a trial that does not switch within its bound is
reported as such, not waited out). Times are the load generator's
monotonic clock; the server, on loopback, is the same machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from media.loadtest.netcap import ReceiveCap, install_receive_cap
from media.loadtest.peers import SignaledPeer
from media.loadtest.preencoded import EncodedClip
from media.loadtest.sfuclient import TrackStats
from media.loadtest.simulcast import SimulcastClips

from .room import BenchRoom, video_from, wait_for
from .sniff import KeyframeTap, tap_subscriber

#: How long after a layer arrives its ``quality`` message may still come (the
#: SFU's allocation runs every 0.5 s; some slack for a loaded machine).
QUALITY_WAIT_S = 1.5


@dataclass(frozen=True)
class SwitchParams:
    cap_bps: int = 400_000
    trials: int = 5
    steady_s: float = 3.0  # on the top layer this long before the cap
    hold_s: float = 5.0  # capped this long after the down-switch
    top_timeout_s: float = 30.0  # to reach the top layer after joining, and to settle
    down_timeout_s: float = 30.0  # cap -> a lower layer; and, after hold_s, to be on one
    up_timeout_s: float = 60.0
    light: bool = False  # header-counting subscriber (no NACK, no PLI)


@dataclass
class Trial:
    index: int
    down_s: float | None = None  # cap -> first packet of a lower layer's keyframe
    down_layer: str | None = None
    down_quality_s: float | None = None  # cap -> the SFU's quality message: lower, or paused
    paused: bool = False  # the SFU paused the video at some point while capped
    ups_while_capped: int = 0  # steps up the SFU tried (and the cap took back)
    up_s: float | None = None  # lift -> first packet of a top-layer keyframe
    up_quality_s: float | None = None
    cap_dropped: int = 0
    max_gap_s: float = 0.0  # longest gap between video frames from the cap on
    watcher_stayed_on_top: bool = True
    error: str | None = None
    #: (seconds from the cap, what): each keyframe's layer as it arrived, the
    #: SFU's ``quality`` messages ("sfu h", "sfu paused"), "lifted".
    timeline: list[tuple[float, str]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _first_quality_after(stats: TrackStats, since: float, rids: set[str]) -> float | None:
    for at, layer, paused in stats.quality:
        if at >= since and (paused or layer in rids):
            return at
    return None


async def _quality_after(stats: TrackStats, since: float, rids: set[str]) -> float | None:
    """:func:`_first_quality_after`, given the SFU's message (sent at its allocation
    tick after the switch) a moment to arrive."""
    with contextlib.suppress(TimeoutError):
        await wait_for(
            lambda: _first_quality_after(stats, since, rids) is not None,
            QUALITY_WAIT_S,
            "the SFU's quality message",
        )
    return _first_quality_after(stats, since, rids)


def _timeline(
    tap: KeyframeTap,
    stats: TrackStats,
    origin: float,
    lifted: float | None,
    names: dict[tuple[int, int], str],
) -> list[tuple[float, str]]:
    events: list[tuple[float, str]] = []
    last = None
    for at, w, h in tap.seen:  # each change of layer (a run of keyframes of one size: once)
        if (w, h) != last:
            events.append((at, names.get((w, h), f"{w}x{h}")))
            last = (w, h)
    events += [
        (at, "sfu " + ("paused" if paused else str(layer))) for at, layer, paused in stats.quality
    ]
    if lifted is not None:
        events.append((lifted, "lifted"))
    return [(round(at - origin, 3), what) for at, what in sorted(events)]


async def trial(
    room: BenchRoom,
    index: int,
    name: str,
    publisher: str,
    watcher: SignaledPeer,
    clips: SimulcastClips,
    p: SwitchParams,
) -> Trial:
    out = Trial(index)
    top = clips.top
    lower = set(clips.sizes[:-1])
    names = dict(zip(clips.sizes, clips.rids, strict=True))
    source = room.user_id(publisher)
    peer = await room.join(name, count_only=p.light)

    def stats() -> TrackStats | None:
        return video_from(peer, source)

    tap: KeyframeTap | None = None
    cap: ReceiveCap | None = None
    capped_at: float | None = None
    lifted_at: float | None = None
    try:
        await wait_for(
            lambda: (s := stats()) is not None and s.frames > 0,
            p.top_timeout_s,
            f"trial {index}: video",
        )
        tap, transport = tap_subscriber(peer.media.subscribe_pc)
        cap = ReceiveCap(p.cap_bps)
        cap.set_bitrate(None)  # in place, not policing yet
        install_receive_cap(transport, cap, peer.media.arrival_stamps)
        video = stats()
        assert video is not None

        def layer_now() -> tuple[int, int] | None:
            # The tap's latest keyframe; before its first, what the peer itself saw.
            assert tap is not None and video is not None
            return tap.size_before(time.monotonic() + 1) or video.size

        await _steady_on_top(layer_now, top, p, index)
        watcher_stats = video_from(watcher, source)
        watcher_sizes = len(watcher_stats.sizes) if watcher_stats else 0

        capped_at = time.monotonic()
        cap.set_bitrate(p.cap_bps)
        video.max_gap = 0.0  # this peer's own counter: the longest gap from here on
        try:
            await wait_for(
                lambda: tap.first_after(capped_at, lower) is not None,
                p.down_timeout_s,
                f"trial {index}: no lower layer",
            )
        finally:
            said = await _quality_after(video, capped_at, set(clips.rids[:-1]))
            out.down_quality_s = round(said - capped_at, 3) if said is not None else None
            out.paused = any(paused for at, _, paused in video.quality if at >= capped_at)
        down = tap.first_after(capped_at, lower)
        assert down is not None
        out.down_s = round(down[0] - capped_at, 3)
        out.down_layer = names[down[1]]
        await asyncio.sleep(p.hold_s)
        # Lift it while on a lower layer (not during one of the SFU's steps up).
        await wait_for(
            lambda: layer_now() in lower,
            p.down_timeout_s,
            f"trial {index}: not back on a lower layer to lift the cap",
        )
        lifted_at = time.monotonic()
        cap.set_bitrate(None)
        seen = [(at, (w, h)) for at, w, h in tap.seen if capped_at <= at < lifted_at]
        out.ups_while_capped = sum(
            1 for (_, a), (_, b) in itertools.pairwise(seen) if a != top and b == top
        )
        await wait_for(
            lambda: tap.first_after(lifted_at, {top}) is not None,
            p.up_timeout_s,
            f"trial {index}: not back on the top layer",
        )
        up = tap.first_after(lifted_at, {top})
        assert up is not None
        out.up_s = round(up[0] - lifted_at, 3)
        said = await _quality_after(video, lifted_at, {clips.rids[-1]})
        out.up_quality_s = round(said - lifted_at, 3) if said is not None else None
        if watcher_stats is not None:
            out.watcher_stayed_on_top = (
                len(watcher_stats.sizes) == watcher_sizes and watcher_stats.size == top
            )
    except TimeoutError as exc:
        out.error = f"{out.error}; {exc}" if out.error else str(exc)
    finally:
        if cap is not None:
            out.cap_dropped = cap.dropped
            cap.set_bitrate(None)
        video = stats()
        if video is not None and capped_at is not None:
            out.max_gap_s = round(video.max_gap, 3)  # from the cap to the end of the trial
        if tap is not None and video is not None and capped_at is not None:
            out.timeline = _timeline(tap, video, capped_at, lifted_at, names)
        await room.leave(name)
    return out


async def _steady_on_top(
    layer_now: Callable[[], tuple[int, int] | None],
    top: tuple[int, int],
    p: SwitchParams,
    index: int,
) -> None:
    """Until the subscriber has been on the top layer for ``steady_s`` (bounded)."""
    deadline = time.monotonic() + p.top_timeout_s
    held_since: float | None = None
    while True:
        now = time.monotonic()
        if layer_now() == top:
            held_since = now if held_since is None else held_since
            if now - held_since >= p.steady_s:
                return
        else:
            held_since = None
        if now > deadline:
            raise TimeoutError(f"trial {index}: not steady on the top layer")
        await asyncio.sleep(0.05)


async def run_switch(
    api: Any,
    session: Any,
    *,
    clips: SimulcastClips,
    audio: EncodedClip,
    params: SwitchParams,
    tag: str,
    progress: Any = None,
) -> list[Trial]:
    names = ["pub", "watcher"] + [f"t{i}" for i in range(params.trials)]
    room = BenchRoom(api, session, [f"{tag}-{n}" for n in names])
    await room.create(tag)
    try:
        await room.join(f"{tag}-pub", simulcast=clips, audio=audio)
        watcher = await room.join(f"{tag}-watcher", count_only=True)
        trials = []
        for i in range(params.trials):
            t = await trial(room, i + 1, f"{tag}-t{i}", f"{tag}-pub", watcher, clips, params)
            trials.append(t)
            if progress is not None:
                progress(trial_line(t))
        return trials
    finally:
        await room.close()


def _dist(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {
        "n": len(values),
        "min": min(values),
        "median": round(statistics.median(values), 3),
        "max": max(values),
    }


def summary(trials: list[Trial]) -> dict[str, Any]:
    def of(attr: str) -> list[float]:
        return [v for t in trials if (v := getattr(t, attr)) is not None]

    return {
        "down_s": _dist(of("down_s")),
        "down_quality_s": _dist(of("down_quality_s")),
        "up_s": _dist(of("up_s")),
        "up_quality_s": _dist(of("up_quality_s")),
        "failed": sum(1 for t in trials if t.error),
        "paused": sum(1 for t in trials if t.paused),
        "watcher_left_top": sum(1 for t in trials if not t.watcher_stayed_on_top),
    }


def _s(value: float | None) -> str:
    return f"{value:.2f} s" if value is not None else "-"


def trial_line(t: Trial) -> str:
    line = (
        f"  trial {t.index}: down to {t.down_layer or '-'} after {_s(t.down_s)} (SFU's "
        f"message {_s(t.down_quality_s)}){', paused' if t.paused else ''}; capped: "
        f"{t.cap_dropped} dropped, {t.ups_while_capped} steps up taken back, longest gap "
        f"{t.max_gap_s:.2f} s; lifted: top layer after {_s(t.up_s)} (SFU's message "
        f"{_s(t.up_quality_s)}); watcher {'on top' if t.watcher_stayed_on_top else 'MOVED'}"
    )
    return line + (f"  [{t.error}]" if t.error else "")


def summary_lines(trials: list[Trial]) -> list[str]:
    s = summary(trials)
    lines = []
    for key, label in (
        ("down_s", "cap -> first packet of a lower layer"),
        ("down_quality_s", "cap -> the SFU's quality message (lower layer or paused)"),
        ("up_s", "lift -> first packet of the top layer"),
        ("up_quality_s", "lift -> the SFU's quality message (top layer)"),
    ):
        d = s[key]
        if d is None:
            lines.append(f"  {label}: none")
        else:
            lines.append(
                f"  {label}: min {d['min']:.2f} / median {d['median']:.2f} / max "
                f"{d['max']:.2f} s (n = {d['n']})"
            )
    lines.append(
        f"  {s['failed']} trial(s) with a bound exceeded, {s['paused']} paused, "
        f"watcher moved off the top layer in {s['watcher_left_top']}"
    )
    return lines
