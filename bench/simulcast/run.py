"""Simulcast benchmarks (issue #13): three layers against one, switch times, a capped run.

Starts one real ``huddle serve`` (uvloop, SQLite, ICE on 127.0.0.1; pinned
to core 0 and this process, the load generator, to core 1, unless
``--no-pin``) and runs, in order (``--only`` picks some):

``cpu``
    rooms of ``--room`` peers, everyone publishing VP8 + Opus and receiving
    everyone else, alternately with three simulcast layers and with one
    (:mod:`bench.simulcast.cpu`); the server's CPU per second of a window
    (its process CPU clock, every thread), and three over one per pair;
``switch``
    one simulcast publisher, then one fresh subscriber per trial whose
    downlink is capped at ``--cap`` once it is on the top layer, then lifted
    (:mod:`bench.simulcast.switch`); min / median / max of the times from the
    cap to the first packet of a lower layer, and from the lift to the top
    layer back;
``loadtest``
    ``huddle loadtest --simulcast --subscriber-cap ...`` as a subprocess
    against the same server; its report text, printed and saved with its
    JSON and HTML.

::

    python -m bench.simulcast.run                     # all three, ~8 min
    python -m bench.simulcast.run --only switch --trials 3
    python -m bench.simulcast.run --only cpu --rounds 1 --warmup 1 --window 2 --room 3

Everything is on loopback and bounded in count and time. Video: the top
layer ``--video-size`` at ``--video-bitrate`` (the lower layers 1/2 and 1/4
of the size at 33 % and 10 % of the rate, as the browser client's
simulcast); single-layer rooms send the top layer's clip alone.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench.loadtest.run import ROOT, serve
from bench.sfu.run import wait_quiet
from media.aiortc_compat import restrict_host_addresses
from media.loadtest.api import HuddleApi
from media.loadtest.cli import _rate, _size
from media.loadtest.preencoded import opus_clip
from media.loadtest.simulcast import SimulcastClips, simulcast_clips

from . import cpu, switch

SERVER_CORE = 0
GENERATOR_CORE = 1
SCENARIOS = ("cpu", "switch", "loadtest")
CLIP_SECONDS = 10


def log(text: str) -> None:
    print(text, flush=True)


def loadtest_args(args: argparse.Namespace) -> list[str]:
    """The ``huddle loadtest`` options of the capped run (the URL comes first)."""
    width, height = args.video_size
    return [
        "--rooms", "1",
        "--publishers", str(args.lt_publishers),
        "--subscribers", str(args.lt_subscribers),
        "--duration", f"{args.lt_duration:g}",
        "--simulcast",
        "--video-size", f"{width}x{height}",
        "--video-bitrate", str(args.video_bitrate),
        "--subscriber-cap", str(args.cap),
        # aiortc's receive path (NACK, PLI), as in bench.loadtest.run: a header
        # counter whose new layer's first keyframe packet the cap dropped would
        # not see the layer change until the next keyframe.
        # The capped subscribers lose what does not fit, by design: the
        # thresholds would only say so; the report shows it per track.
        "--max-loss", "100",
        "--min-fps", "0",
    ]  # fmt: skip


async def run_loadtest(url: str, args: argparse.Namespace) -> dict[str, Any]:
    out: Path = args.out
    command = [sys.executable, "-m", "server.cli", "--log-level", "WARNING", "loadtest"]
    options = loadtest_args(args)
    files = ["--quiet", "--json", str(out / "capped.json"), "--html", str(out / "capped.html")]
    shown = "huddle loadtest --url URL " + shlex.join(options)
    log(f"  {shown}")
    started = time.monotonic()
    process = await asyncio.create_subprocess_exec(
        *command, "--url", url, *options, *files,
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    # Bounded: ramp + settle (20 s) + steady + leave (30 s) + slack.
    limit = args.lt_duration + 180
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=limit)
    except TimeoutError:
        process.kill()
        await process.wait()
        return {"command": shown, "error": f"no report within {limit:g} s"}
    text = stdout.decode(errors="replace")
    (out / "capped.txt").write_text(f"$ {shown}\n{text}")
    log(text.rstrip())
    if process.returncode not in (0, 1):
        log(stderr.decode(errors="replace")[-2000:])
    return {
        "command": shown,
        "exit": process.returncode,
        "seconds": round(time.monotonic() - started, 1),
        "report_text": text,
        "files": [str(out / f"capped.{ext}") for ext in ("txt", "json", "html")],
    }


async def main_async(args: argparse.Namespace) -> int:
    scenarios = [s for s in SCENARIOS if s in args.only]
    width, height = args.video_size
    frames = CLIP_SECONDS * args.video_fps
    clips: SimulcastClips = await asyncio.to_thread(
        simulcast_clips,
        width,
        height,
        frames=frames,
        fps=args.video_fps,
        bitrate=args.video_bitrate,
        keyframe_every=frames,  # only the loop's first frame, then on request
    )
    audio = opus_clip()
    restrict_host_addresses(["127.0.0.1"])
    quiet = await wait_quiet(args.max_load, args.quiet_wait)
    results: dict[str, Any] = {
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "layers": [
            {"rid": rid, "size": list(size), "kbit_s": round(clip.bitrate / 1000, 1)}
            for rid, size, clip in zip(clips.rids, clips.sizes, clips.clips, strict=True)
        ],
        "quiet": quiet,
    }
    log(
        "simulcast benchmark: layers "
        + ", ".join(
            f"{la['rid']} {la['size'][0]}x{la['size'][1]} {la['kbit_s']:.0f} kbit/s"
            for la in results["layers"]
        )
        + f"; 1-minute load {quiet['load_when_started'][0]:.2f}"
    )
    peers = max(args.room, args.trials + 2, args.lt_publishers + args.lt_subscribers) + 2
    args.out.mkdir(parents=True, exist_ok=True)
    async with (
        serve(
            peers,
            cpu=SERVER_CORE if args.pin else None,
            settings={"HUDDLE_LOG_LEVEL": args.server_log_level},
        ) as served,
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as session,
    ):
        api = HuddleApi(served.url, session)
        if "cpu" in scenarios:
            log(f"cpu: room of {args.room}, {args.rounds} pair(s) of runs, {args.window:g} s each")
            runs = []
            for i, layers in enumerate(cpu.order(args.rounds)):
                run = await cpu.room_run(
                    api,
                    session,
                    server_pid=served.pid,
                    layers=layers,
                    size=args.room,
                    clips=clips,
                    audio=audio,
                    warmup_s=args.warmup,
                    window_s=args.window,
                    join_spacing_s=args.join_spacing,
                    tag=f"cpu{i}",
                )
                runs.append(run)
                log(cpu.run_line(i + 1, run))
                await asyncio.sleep(args.cooldown)
            for line in cpu.summary_lines(runs):
                log(line)
            results["cpu"] = {"runs": [r.as_dict() for r in runs], "summary": cpu.summary(runs)}
        if "switch" in scenarios:
            log(f"switch: cap {args.cap / 1000:g} kbit/s, {args.trials} trial(s)")
            params = switch.SwitchParams(
                cap_bps=args.cap,
                trials=args.trials,
                steady_s=args.steady,
                hold_s=args.hold,
                down_timeout_s=args.down_timeout,
                up_timeout_s=args.up_timeout,
                light=args.light_receiver,
            )
            trials = await switch.run_switch(
                api, session, clips=clips, audio=audio, params=params, tag="sw", progress=log
            )
            for line in switch.summary_lines(trials):
                log(line)
            results["switch"] = {
                "trials": [t.as_dict() for t in trials],
                "summary": switch.summary(trials),
            }
        if "loadtest" in scenarios:
            log(f"loadtest: capped subscribers at {args.cap / 1000:g} kbit/s")
            results["loadtest"] = await run_loadtest(served.url, args)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
        log(f"results: {args.json}")
    return 0


def _only(text: str) -> list[str]:
    names = [n for n in text.split(",") if n]
    unknown = set(names) - set(SCENARIOS)
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    return names


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--only", type=_only, default=list(SCENARIOS), help="cpu,switch,loadtest")
    p.add_argument("--video-size", type=_size, default=(640, 360), help="top layer, 640x360")
    p.add_argument("--video-bitrate", type=_rate, default=1_000_000, help="top layer, 1M")
    p.add_argument("--video-fps", type=int, default=30)
    g = p.add_argument_group("cpu")
    g.add_argument("--room", type=int, default=6, help="peers in each room (default 6)")
    g.add_argument("--rounds", type=int, default=3, help="pairs of runs, 1 + 3 layers (3)")
    g.add_argument("--warmup", type=float, default=5.0, help="s after everyone receives (5)")
    g.add_argument("--window", type=float, default=15.0, help="measured s per run (15)")
    g.add_argument("--join-spacing", type=float, default=0.3, help="s between joins (0.3)")
    g.add_argument("--cooldown", type=float, default=2.0, help="s between runs (2)")
    g = p.add_argument_group("switch")
    g.add_argument("--cap", type=_rate, default=400_000, help="downlink cap, 400k")
    g.add_argument("--trials", type=int, default=5, help="capped subscribers, one by one (5)")
    g.add_argument("--steady", type=float, default=3.0, help="s on the top layer first (3)")
    g.add_argument("--hold", type=float, default=5.0, help="s capped after the switch (5)")
    g.add_argument("--down-timeout", type=float, default=30.0, help="s to wait for it (30)")
    g.add_argument("--up-timeout", type=float, default=60.0, help="s, after the lift (60)")
    g.add_argument(
        "--light-receiver",
        action="store_true",
        help="the capped subscriber counts RTP headers (no NACK, no PLI) instead of "
        "aiortc's receive path (NACKs and PLIs, as a browser)",
    )
    g = p.add_argument_group("loadtest")
    g.add_argument("--lt-publishers", type=int, default=3, help="(3)")
    g.add_argument("--lt-subscribers", type=int, default=3, help="all capped (3)")
    g.add_argument("--lt-duration", type=float, default=30.0, help="steady s (30)")
    g = p.add_argument_group("machine and output")
    g.add_argument("--no-pin", dest="pin", action="store_false", help="no taskset pinning")
    g.add_argument("--max-load", type=float, default=1.5, help="wait for a 1-min load below")
    g.add_argument("--quiet-wait", type=float, default=120.0, help="at most this long (s)")
    g.add_argument("--server-log-level", default="WARNING", help="its HUDDLE_LOG_LEVEL")
    g.add_argument("--out", type=Path, default=ROOT / "var" / "bench-simulcast")
    g.add_argument("--json", type=Path, help="write every figure here")
    return p


def check(args: argparse.Namespace) -> str | None:
    if not 2 <= args.room <= 10:
        return "--room must be in 2..10"
    if not 1 <= args.rounds <= 10:
        return "--rounds must be in 1..10"
    if not 1 <= args.trials <= 20:
        return "--trials must be in 1..20"
    if not (0 <= args.warmup <= 60 and 0.5 <= args.window <= 120 and 0 <= args.cooldown <= 60):
        return "--warmup in 0..60, --window in 0.5..120, --cooldown in 0..60 s"
    if not (0 <= args.steady <= 60 and 0 <= args.hold <= 60):
        return "--steady and --hold in 0..60 s"
    if not (1 <= args.down_timeout <= 300 and 1 <= args.up_timeout <= 300):
        return "--down-timeout and --up-timeout in 1..300 s"
    if not 1 <= args.lt_duration <= 600:
        return "--lt-duration in 1..600 s"
    if args.cap < 10_000:
        return "--cap must be at least 10 kbit/s"
    return None


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    problem = check(args)
    if problem:
        print(f"bench.simulcast.run: {problem}", file=sys.stderr)
        return 2
    if args.pin and (os.cpu_count() or 1) < 2:
        args.pin = False
    if args.pin:
        os.sched_setaffinity(0, {GENERATOR_CORE})
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover
        pass
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
