"""SFU load scenario: rooms of meeting publishers plus watchers, via the load tester.

Starts a real ``huddle serve`` (uvloop, SQLite, ICE on 127.0.0.1) unless
``--url`` is given, then runs :class:`media.loadtest.orchestration.LoadTest`
(the same code as ``huddle loadtest``) and writes the JSON and HTML reports::

    python -m bench.loadtest.run                      # 4 rooms x (3 + 2), 30 s
    python -m bench.loadtest.run --rooms 2 --duration 10 --out var/loadtest

The load generator and the server share the machine: the report shows both
CPUs, and warns when the load generator's own core was the bottleneck.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import socket
import sys
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp

from media.loadtest.metrics import Thresholds, TimelinePoint
from media.loadtest.orchestration import LoadTest, LoadTestConfig
from media.loadtest.report import progress_line, summary_text, to_html, to_json

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclasses.dataclass(frozen=True)
class Served:
    """A running ``huddle serve``: its base URL and process id (for ``/proc``)."""

    url: str
    pid: int


@asynccontextmanager
async def serve(
    max_participants: int, *, cpu: int | None = None, settings: dict[str, str] | None = None
) -> AsyncIterator[Served]:
    """A fresh ``huddle serve`` on a free loopback port; SIGTERM on the way out.

    ``cpu``: pin it to that core (``taskset``, which execs: the pid is the
    server's); ``settings``: more ``HUDDLE_*`` variables.
    """
    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="huddle-bench-") as tmp:
        env = {k: v for k, v in os.environ.items() if not k.startswith("HUDDLE_")}
        env.update(
            HUDDLE_PORT=str(port),
            HUDDLE_DATABASE_URL=f"sqlite:///{tmp}/huddle.db",
            HUDDLE_ICE_HOSTS="127.0.0.1",
            HUDDLE_INITIATE_PER_MINUTE="100000",
            HUDDLE_MAX_PARTICIPANTS=str(max_participants),
            HUDDLE_LOG_LEVEL="WARNING",
            # The SFU in the server's process (its CPU is the pid's) unless asked.
            HUDDLE_WORKERS="1",
        )
        env.update(settings or {})
        pin = ["taskset", "-c", str(cpu)] if cpu is not None else []
        process = await asyncio.create_subprocess_exec(
            *pin, sys.executable, "-m", "server.cli", "serve", env=env, cwd=ROOT
        )
        base = f"http://127.0.0.1:{port}"
        try:
            async with aiohttp.ClientSession() as session:
                for _ in range(300):
                    try:
                        async with session.get(f"{base}/health") as response:
                            if response.status == 200:
                                break
                    except aiohttp.ClientError:
                        pass
                    if process.returncode is not None:
                        raise RuntimeError(f"the server exited with {process.returncode}")
                    await asyncio.sleep(0.1)
                else:
                    raise RuntimeError("the server did not become healthy in 30 s")
            yield Served(base, process.pid)
        finally:
            if process.returncode is None:
                process.terminate()
            try:
                await asyncio.wait_for(process.wait(), timeout=20)
            except TimeoutError:
                process.kill()
                await process.wait()


@asynccontextmanager
async def server(max_participants: int) -> AsyncIterator[str]:
    """:func:`serve`, for its URL only."""
    async with serve(max_participants) as served:
        yield served.url


async def main_async(args: argparse.Namespace) -> int:
    def progress(point: TimelinePoint) -> None:
        print(progress_line(point), file=sys.stderr, flush=True)

    config = LoadTestConfig(
        url=args.url or "",
        rooms=args.rooms,
        publishers=args.publishers,
        subscribers=args.subscribers,
        duration_s=args.duration,
        ramp_per_s=args.ramp,
        video_bitrate=args.video_bitrate,
        light_receivers=args.light_receivers,
        thresholds=Thresholds(min_fps=args.min_fps),
    )
    if args.url:
        report = await LoadTest(config, progress=progress).run()
    else:
        async with server(args.publishers + args.subscribers + 1) as url:
            config = dataclasses.replace(config, url=url)
            report = await LoadTest(config, progress=progress).run()
    print(summary_text(report))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "loadtest.json").write_text(to_json(report))
    (args.out / "loadtest.html").write_text(to_html(report))
    print(f"\nreports: {args.out / 'loadtest.json'}, {args.out / 'loadtest.html'}")
    return 0 if report.passed else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="an already running server (default: start one)")
    parser.add_argument("--rooms", type=int, default=4)
    parser.add_argument("--publishers", type=int, default=3)
    parser.add_argument("--subscribers", type=int, default=2)
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--ramp", type=float, default=4.0)
    parser.add_argument("--video-bitrate", type=int, default=300_000)
    parser.add_argument("--min-fps", type=float, default=15.0)
    parser.add_argument(
        "--light-receivers", action="store_true", help="header-counting receivers (no NACK/PLI)"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "var" / "loadtest")
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover
        pass
    sys.exit(asyncio.run(main_async(args)))


if __name__ == "__main__":
    main()
