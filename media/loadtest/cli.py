"""``huddle loadtest``: arguments and entry point (``server/cli.py`` delegates here).

Only :mod:`argparse` is imported at module level so that building the
``huddle`` parser stays cheap; aiortc is loaded when a load test runs.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from .metrics import TimelinePoint
    from .orchestration import LoadTestConfig, LoadTestReport

EXIT_OK, EXIT_THRESHOLDS, EXIT_USAGE = 0, 1, 2


def _rate(text: str) -> int:
    """``300000``, ``300k`` or ``1.5M`` bits per second."""
    value = text.strip().lower()
    scale = 1
    if value.endswith(("k", "m")):
        scale = 1_000 if value[-1] == "k" else 1_000_000
        value = value[:-1]
    try:
        return int(float(value) * scale)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a bitrate: {text!r}") from None


def _size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not WIDTHxHEIGHT: {text!r}") from None
    return width, height


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``loadtest`` subcommand's options."""
    room = parser.add_argument_group("rooms")
    room.add_argument("--url", default="http://127.0.0.1:8080", help="the Huddle server")
    room.add_argument("--rooms", type=int, default=1, help="rooms (calls) at once (default 1)")
    room.add_argument(
        "--publishers",
        type=int,
        default=2,
        help="per room: peers that publish and receive each other (default 2)",
    )
    room.add_argument(
        "--subscribers", type=int, default=1, help="per room: peers that only receive (default 1)"
    )
    room.add_argument(
        "--duration", type=float, default=30.0, help="steady seconds once all joined (default 30)"
    )
    room.add_argument(
        "--ramp",
        type=float,
        default=5.0,
        metavar="PER_SECOND",
        help="joins per second over all rooms; 0 = all at once (default 5)",
    )
    room.add_argument(
        "--settle",
        type=float,
        default=20.0,
        help="max seconds to wait after the last join for connections and first frames",
    )
    media = parser.add_argument_group("media")
    media.add_argument(
        "--video-bitrate", type=_rate, default=300_000, help="e.g. 300k, 1.2M (default 300k)"
    )
    media.add_argument("--video-size", type=_size, default=(320, 240), help="default 320x240")
    media.add_argument("--video-fps", type=int, default=30, help="default 30")
    media.add_argument("--audio-only", action="store_true", help="publish Opus only")
    media.add_argument(
        "--simulcast",
        action="store_true",
        help="publish video as three VP8 layers (rids q/h/f at 1/4, 1/2 and the full "
        "--video-size; 10/33/100%% of --video-bitrate) and report which layer each "
        "subscriber receives over time",
    )
    media.add_argument(
        "--subscriber-cap",
        type=_rate,
        metavar="BITRATE",
        help="cap every subscriber's receive bitrate (e.g. 400k): RTP beyond it waits "
        "in a 300 ms queue, then is dropped, like a slow downlink (tc tbf) (off)",
    )
    media.add_argument(
        "--light-receivers",
        action="store_true",
        help="count received RTP from headers instead of aiortc's receive path: "
        "~4x less load-generator CPU per packet, but no NACK/PLI (loss is reported as is)",
    )
    media.add_argument(
        "--ice-host",
        action="append",
        default=None,
        metavar="ADDRESS",
        help="ICE host address to offer (repeatable; default 127.0.0.1; 'all' = every "
        "non-loopback interface)",
    )
    auth = parser.add_argument_group("identities")
    auth.add_argument(
        "--secret",
        help="mint tokens with this HS256 secret (the server's HUDDLE_JWT_SECRET) instead "
        "of POST /v1/dev/token; default $HUDDLE_LOADTEST_SECRET",
    )
    limits = parser.add_argument_group("thresholds (exit status 1 when one is broken)")
    limits.add_argument(
        "--max-loss", type=float, default=2.0, help="packet loss %% over all tracks (default 2)"
    )
    limits.add_argument(
        "--min-fps", type=float, default=15.0, help="every video track's fps (default 15; 0 = off)"
    )
    limits.add_argument(
        "--max-missing", type=int, default=0, help="tracks received with no frame (default 0)"
    )
    limits.add_argument(
        "--max-failed", type=int, default=0, help="peers that failed to join/connect (default 0)"
    )
    limits.add_argument("--max-freezes", type=int, help="gaps over 500 ms, all tracks (off)")
    limits.add_argument("--max-join-p95", type=float, help="seconds, join -> connected (off)")
    limits.add_argument(
        "--max-first-frame-p95", type=float, help="seconds, track announced -> frame (off)"
    )
    out = parser.add_argument_group("output")
    out.add_argument("--json", type=Path, metavar="FILE", help="write the JSON report")
    out.add_argument("--html", type=Path, metavar="FILE", help="write the HTML report")
    out.add_argument("--quiet", action="store_true", help="no progress line")
    parser.set_defaults(run=run)


def config_from_args(args: argparse.Namespace) -> LoadTestConfig:
    from .metrics import Thresholds
    from .orchestration import LoadTestConfig

    hosts = args.ice_host or ["127.0.0.1"]
    ice_hosts: tuple[str, ...] = () if hosts == ["all"] else tuple(hosts)
    config = LoadTestConfig(
        url=args.url,
        rooms=args.rooms,
        publishers=args.publishers,
        subscribers=args.subscribers,
        duration_s=args.duration,
        ramp_per_s=args.ramp,
        audio_only=args.audio_only,
        simulcast=args.simulcast,
        subscriber_cap_bps=args.subscriber_cap,
        video_bitrate=args.video_bitrate,
        video_width=args.video_size[0],
        video_height=args.video_size[1],
        video_fps=args.video_fps,
        secret=args.secret or os.environ.get("HUDDLE_LOADTEST_SECRET") or None,
        ice_hosts=ice_hosts,
        settle_s=args.settle,
        light_receivers=args.light_receivers,
        thresholds=Thresholds(
            max_missing_tracks=args.max_missing,
            max_failed_peers=args.max_failed,
            max_loss_pct=args.max_loss,
            min_fps=args.min_fps if args.min_fps > 0 else None,
            max_freezes=args.max_freezes,
            max_join_p95_s=args.max_join_p95,
            max_first_frame_p95_s=args.max_first_frame_p95,
        ),
    )
    config.validate()
    return config


class _ProgressPrinter:
    """A status line rewritten in place on a terminal, one line per 5 s otherwise."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._tty = stream.isatty()
        self._last = -1e9
        self._open = False

    def __call__(self, point: TimelinePoint) -> None:
        from .report import progress_line

        line = progress_line(point)
        if self._tty:
            print("\r" + line.ljust(110), end="", file=self._stream, flush=True)
            self._open = True
        elif point.t - self._last >= 5:
            print(line, file=self._stream, flush=True)
            self._last = point.t

    def done(self) -> None:
        if self._open:
            print(file=self._stream, flush=True)


async def _reachable(url: str) -> str | None:
    import aiohttp

    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
            session.get(url.rstrip("/") + "/health") as response,
        ):
            if response.status != 200:
                return f"GET /health answered {response.status}"
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


async def _main(config: LoadTestConfig, quiet: bool) -> LoadTestReport | str:
    from .orchestration import LoadTest

    problem = await _reachable(config.url)
    if problem is not None:
        return f"cannot reach {config.url}: {problem}"
    printer = _ProgressPrinter(sys.stderr)
    try:
        return await LoadTest(config, progress=None if quiet else printer).run()
    finally:
        printer.done()


def run(args: argparse.Namespace) -> int:
    """Run a load test from parsed arguments; the exit status says if it passed."""
    try:
        config = config_from_args(args)
    except ValueError as exc:
        print(f"huddle loadtest: {exc}", file=sys.stderr)
        return EXIT_USAGE
    for noisy in ("aioice", "aiortc", "media.aiortc_compat"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.root.level))
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        pass
    from .report import summary_text, to_html, to_json

    result = asyncio.run(_main(config, args.quiet))
    if isinstance(result, str):
        print(f"huddle loadtest: {result}", file=sys.stderr)
        return EXIT_USAGE
    print(summary_text(result))
    if args.json is not None:
        args.json.write_text(to_json(result))
    if args.html is not None:
        args.html.write_text(to_html(result))
    return EXIT_OK if result.passed else EXIT_THRESHOLDS
