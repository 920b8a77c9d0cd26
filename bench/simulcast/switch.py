"""Time from a downlink's bandwidth drop to the SFU's down-switch, and back up once lifted.

One simulcast publisher (three layers, :mod:`media.loadtest.simulcast`) and
one uncapped *watcher* stay in the room for the whole run; each trial is a
fresh receive-only subscriber whose downlink is policed by the load
tester's token bucket (:class:`media.loadtest.netcap.ReceiveCap`: RTP
arriving above the rate is dropped, as a slow link would, and the
subscriber's receiver reports show it as loss). The cap is installed when
it joins but lifted (everything passes) until it receives the top layer
and has held it for ``steady_s``; then, at a noted instant:

1. the cap is set (``cap_bps``, from a full bucket): the time until the
   first packet of a lower layer's keyframe arrives (the subscriber sees one
   SSRC whatever the layer; VP8 keyframes carry their picture size, which
   :mod:`media.loadtest.rtpcount` reads from the keyframe's first packet) is
   the *down-switch*; the SFU's ``quality`` message naming the lower layer
   (or a pause) is its *decision*, noted too;
2. after ``hold_s`` more on the capped link, the cap is lifted: the time
   until the first packet of a top-layer keyframe is the *recovery*.

Every wait is bounded (a trial that does not switch within its bound is
reported as such, not waited out). Timings are the load generator's
monotonic clock; the server, on loopback, is the same machine.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any

from media.loadtest.peers import SignaledPeer
from media.loadtest.preencoded import EncodedClip
from media.loadtest.sfuclient import TrackStats
from media.loadtest.simulcast import SimulcastClips

from .room import BenchRoom, video_from, wait_for


@dataclass(frozen=True)
class SwitchParams:
    cap_bps: int = 400_000
    trials: int = 5
    steady_s: float = 3.0  # on the top layer this long before the cap
    hold_s: float = 5.0  # capped this long after the down-switch
    top_timeout_s: float = 30.0  # to reach the top layer after joining, and to settle
    down_timeout_s: float = 30.0
    up_timeout_s: float = 60.0
    light: bool = True  # header-counting subscriber (first packet of a keyframe)


@dataclass
class Trial:
    index: int
    down_s: float | None = None  # cap -> first packet of a lower layer
    down_layer: str | None = None
    down_decided_s: float | None = None  # cap -> the SFU's quality message
    paused: bool = False  # the SFU paused the video instead of a lower layer
    up_s: float | None = None  # lift -> first packet of the top layer
    up_decided_s: float | None = None
    cap_dropped: int = 0
    max_gap_s: float = 0.0  # longest video gap while capped
    watcher_stayed_on_top: bool = True
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _first_size_after(
    stats: TrackStats, since: float, want: set[tuple[int, int]]
) -> tuple[float, tuple[int, int]] | None:
    for at, width, height in stats.sizes:
        if at >= since and (width, height) in want:
            return at, (width, height)
    return None


def _first_quality_after(stats: TrackStats, since: float, rids: set[str]) -> float | None:
    for at, layer, paused in stats.quality:
        if at >= since and (paused or layer in rids):
            return at
    return None


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
    peer = await room.join(name, count_only=p.light, receive_cap_bps=p.cap_bps)
    cap = peer.media.receive_cap
    assert cap is not None
    cap.set_bitrate(None)  # installed, not policing yet
    source = room.user_id(publisher)

    def stats() -> TrackStats | None:
        return video_from(peer, source)

    def on_top() -> bool:
        s = stats()
        return s is not None and s.size == top

    try:
        await wait_for(on_top, p.top_timeout_s, f"trial {index}: the top layer")
        # Settled: the top layer held for steady_s (a late probe may still move it).
        deadline = time.monotonic() + p.top_timeout_s
        held_since = time.monotonic()
        while time.monotonic() - held_since < p.steady_s:
            if not on_top():
                held_since = await wait_for(on_top, p.top_timeout_s, f"trial {index}: back on top")
            if time.monotonic() > deadline:
                raise TimeoutError(f"trial {index}: the top layer not steady")
            await asyncio.sleep(0.05)
        video = stats()
        assert video is not None
        watcher_stats = video_from(watcher, source)
        watcher_sizes = len(watcher_stats.sizes) if watcher_stats else 0
        dropped_before = cap.dropped
        video.max_gap = 0.0  # this peer's own counter: the longest gap from the cap on

        capped_at = time.monotonic()
        cap.set_bitrate(p.cap_bps)
        try:
            await wait_for(
                lambda: _first_size_after(video, capped_at, lower) is not None,
                p.down_timeout_s,
                f"trial {index}: a lower layer",
            )
            found = _first_size_after(video, capped_at, lower)
            assert found is not None
            out.down_s = round(found[0] - capped_at, 3)
            out.down_layer = names[found[1]]
        except TimeoutError as exc:
            out.error = str(exc)
        decided = _first_quality_after(video, capped_at, set(clips.rids[:-1]))
        out.down_decided_s = round(decided - capped_at, 3) if decided is not None else None
        out.paused = any(q[2] for q in video.quality if q[0] >= capped_at)
        await asyncio.sleep(p.hold_s)
        out.cap_dropped = cap.dropped - dropped_before
        out.max_gap_s = round(video.max_gap, 3)

        lifted_at = time.monotonic()
        cap.set_bitrate(None)
        try:
            await wait_for(
                lambda: _first_size_after(video, lifted_at, {top}) is not None,
                p.up_timeout_s,
                f"trial {index}: back on the top layer",
            )
            found = _first_size_after(video, lifted_at, {top})
            assert found is not None
            out.up_s = round(found[0] - lifted_at, 3)
        except TimeoutError as exc:
            out.error = f"{out.error}; {exc}" if out.error else str(exc)
        decided = _first_quality_after(video, lifted_at, {clips.rids[-1]})
        out.up_decided_s = round(decided - lifted_at, 3) if decided is not None else None
        if watcher_stats is not None:
            out.watcher_stayed_on_top = (
                len(watcher_stats.sizes) == watcher_sizes and watcher_stats.size == top
            )
    except TimeoutError as exc:
        out.error = str(exc)
    finally:
        await room.leave(name)
    return out


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
        "down_decided_s": _dist(of("down_decided_s")),
        "up_s": _dist(of("up_s")),
        "up_decided_s": _dist(of("up_decided_s")),
        "failed": sum(1 for t in trials if t.error),
        "paused": sum(1 for t in trials if t.paused),
        "watcher_left_top": sum(1 for t in trials if not t.watcher_stayed_on_top),
    }


def _s(value: float | None) -> str:
    return f"{value:.2f} s" if value is not None else "-"


def trial_line(t: Trial) -> str:
    line = (
        f"  trial {t.index}: down to {t.down_layer or '-'} after {_s(t.down_s)} (SFU said so "
        f"after {_s(t.down_decided_s)}){', paused' if t.paused else ''}; capped: {t.cap_dropped} "
        f"dropped, longest gap {t.max_gap_s:.2f} s; lifted: top layer after {_s(t.up_s)} "
        f"(SFU: {_s(t.up_decided_s)}); watcher {'on top' if t.watcher_stayed_on_top else 'MOVED'}"
    )
    return line + (f"  [{t.error}]" if t.error else "")


def summary_lines(trials: list[Trial]) -> list[str]:
    s = summary(trials)
    lines = []
    for key, label in (
        ("down_s", "cap -> first packet of a lower layer"),
        ("down_decided_s", "cap -> SFU's quality message (lower layer)"),
        ("up_s", "lift -> first packet of the top layer"),
        ("up_decided_s", "lift -> SFU's quality message (top layer)"),
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
