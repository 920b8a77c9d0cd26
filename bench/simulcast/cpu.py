"""Server CPU of a room where everyone publishes three simulcast layers, against one layer.

Each run is a fresh room of ``size`` load-tester peers in the same
``huddle serve``, every peer publishing VP8 + Opus and receiving everyone
else: with ``layers=3`` its camera goes out as three layers (rids q/h/f at
1/4, 1/2 and the full size; :mod:`media.loadtest.simulcast`), with
``layers=1`` as one encoding, the very clip of the top layer. The SFU
forwards one layer per subscriber either way, and nobody's downlink is
capped, so every subscriber should end on the top layer: what the runs
differ in is what the server takes in (three layers' packets and RTCP,
their keyframes, the layer bookkeeping and the per-subscriber adaptation),
not what it sends. The measured window starts once every peer receives
every other peer's video (at the top layer) and a warm-up has passed.

Runs alternate (1, 3, 3, 1, 1, 3, ...: each pair in the opposite order
of the last) so that a drift of the machine's speed during the run falls on
both sides; the ratio is taken per pair, then the median.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any

from bench.sfu.run import cpu_seconds_fine
from media.loadtest.aiortc_compat import vp8_payloads
from media.loadtest.metrics import snapshot
from media.loadtest.preencoded import EncodedClip
from media.loadtest.simulcast import SimulcastClips

from .room import BenchRoom, video_from, wait_for

READY_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class CpuRun:
    """One room's measured window."""

    layers: int  # encodings each publisher sends: 1 or 3
    size: int
    window_s: float
    server_cpu_s: float
    generator_cpu_s: float
    forwarded_packets: int  # RTP packets every peer received (audio + video)
    offered_video_packets_per_s: float  # what the publishers send, from the clips
    lost: int
    fps_mean: float
    fps_min: float
    on_top: int  # received video tracks on the top layer at the end
    video_tracks: int
    ready_s: float  # from the first join until everyone received everyone
    load: tuple[float, float, float]

    @property
    def server_core(self) -> float:
        """The server's CPU per second of the window (1.0 = one core)."""
        return self.server_cpu_s / self.window_s

    @property
    def generator_core(self) -> float:
        return self.generator_cpu_s / self.window_s

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["server_core"] = round(self.server_core, 5)
        out["generator_core"] = round(self.generator_core, 5)
        return out


def packets_per_second(clip: EncodedClip) -> float:
    """RTP packets per second the clip makes (VP8 packetized as the load tester does)."""
    packets = sum(len(vp8_payloads(data, 0)) for data, _ in clip.frames)
    return packets / (len(clip.frames) * clip.frame_interval)


def order(rounds: int) -> list[int]:
    """Layers per run: pairs, each in the opposite order of the one before (1 3 3 1 1 3 ...)."""
    out: list[int] = []
    for r in range(rounds):
        out += [1, 3] if r % 2 == 0 else [3, 1]
    return out


async def room_run(
    api: Any,
    session: Any,
    *,
    server_pid: int,
    layers: int,
    size: int,
    clips: SimulcastClips,
    audio: EncodedClip,
    warmup_s: float,
    window_s: float,
    join_spacing_s: float,
    tag: str,
) -> CpuRun:
    names = [f"{tag}-p{i}" for i in range(size)]
    room = BenchRoom(api, session, names)
    await room.create(tag)
    top = clips.top
    try:
        started = time.monotonic()
        for name in names:
            if layers == 3:
                await room.join(name, simulcast=clips, audio=audio)
            else:
                await room.join(name, video=clips.clips[-1], audio=audio)
            await asyncio.sleep(join_spacing_s)
        peers = list(room.peers.values())
        ids = [room.user_id(n) for n in names]

        def tracks() -> list[Any]:
            return [
                video_from(peer, source)
                for peer, me in zip(peers, ids, strict=True)
                for source in ids
                if source != me
            ]

        def ready() -> bool:
            return all(t is not None and t.frames > 0 and t.size == top for t in tracks())

        ready_at = await wait_for(ready, READY_TIMEOUT_S, f"room of {size}, {layers} layer(s)")
        await asyncio.sleep(warmup_s)
        before = snapshot(peers)
        cpu0, gen0, t0 = cpu_seconds_fine(server_pid), time.process_time(), time.monotonic()
        await asyncio.sleep(window_s)
        cpu1, gen1, t1 = cpu_seconds_fine(server_pid), time.process_time(), time.monotonic()
        after = snapshot(peers)
        load = os.getloadavg()
        window = t1 - t0
        fps = [
            (after[k].frames - before[k].frames) / window
            for k in after
            if k[2] == "video" and k in before
        ]
        received = sum(
            after[k].packets.received - (before[k].packets.received if k in before else 0)
            for k in after
        )
        lost = sum(
            after[k].packets.lost - (before[k].packets.lost if k in before else 0) for k in after
        )
        video = [t for t in tracks() if t is not None]
        sent = sum(packets_per_second(c) for c in clips.clips) if layers == 3 else None
        return CpuRun(
            layers=layers,
            size=size,
            window_s=round(window, 3),
            server_cpu_s=round(cpu1 - cpu0, 4),
            generator_cpu_s=round(gen1 - gen0, 4),
            forwarded_packets=received,
            offered_video_packets_per_s=round(
                size * (sent if sent is not None else packets_per_second(clips.clips[-1])), 1
            ),
            lost=lost,
            fps_mean=round(statistics.fmean(fps), 2) if fps else 0.0,
            fps_min=round(min(fps), 2) if fps else 0.0,
            on_top=sum(1 for t in video if t.size == top),
            video_tracks=size * (size - 1),
            ready_s=round(ready_at - started, 2),
            load=load,
        )
    finally:
        await room.close()


def ratios(runs: list[CpuRun]) -> list[float]:
    """Server core, three layers over one, per consecutive pair of runs."""
    out = []
    for a, b in zip(runs[::2], runs[1::2], strict=False):
        one, three = (a, b) if a.layers == 1 else (b, a)
        if one.layers == 1 and three.layers == 3 and one.server_core > 0:
            out.append(three.server_core / one.server_core)
    return out


def summary(runs: list[CpuRun]) -> dict[str, Any]:
    pairs = ratios(runs)
    by = {n: [r.server_core for r in runs if r.layers == n] for n in (1, 3)}
    return {
        "ratio_per_pair": [round(x, 3) for x in pairs],
        "ratio_median": round(statistics.median(pairs), 3) if pairs else None,
        "server_core_1": [round(x, 4) for x in by[1]],
        "server_core_3": [round(x, 4) for x in by[3]],
        "server_core_1_median": round(statistics.median(by[1]), 4) if by[1] else None,
        "server_core_3_median": round(statistics.median(by[3]), 4) if by[3] else None,
        "clean": all(r.lost == 0 and r.on_top == r.video_tracks for r in runs),
    }


def run_line(index: int, run: CpuRun) -> str:
    fwd = run.forwarded_packets / run.window_s
    return (
        f"  run {index}: {run.layers} layer{'s' if run.layers > 1 else ' '}  server "
        f"{100 * run.server_core:5.2f}% of a core, generator {100 * run.generator_core:4.0f}%, "
        f"in {run.offered_video_packets_per_s:,.0f} video pkt/s, forwarded {fwd:,.0f} pkt/s, "
        f"fps {run.fps_mean:.1f} (worst {run.fps_min:.1f}), lost {run.lost}, top layer "
        f"{run.on_top}/{run.video_tracks}, ready in {run.ready_s:.1f} s, "
        f"load {run.load[0]:.2f}"
    )


def summary_lines(runs: list[CpuRun]) -> list[str]:
    s = summary(runs)
    if s["ratio_median"] is None:
        return ["  no complete pair of runs"]
    pairs = " ".join(f"{x:.2f}" for x in s["ratio_per_pair"])
    lines = [
        f"  server core, median: 1 layer {100 * s['server_core_1_median']:.2f}%, "
        f"3 layers {100 * s['server_core_3_median']:.2f}%",
        f"  3 layers / 1 layer: {s['ratio_median']:.2f} (median of pairs: {pairs})",
    ]
    if not s["clean"]:
        lines.append("  NOT CLEAN: a run lost packets or a track was not on the top layer")
    if max(r.generator_core for r in runs) > 0.85:
        lines.append("  the load generator was above 85% of a core: it may have paced the server")
    return lines
