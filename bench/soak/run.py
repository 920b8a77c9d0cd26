"""The soak: a real ``huddle serve`` cycling calls and media rooms, watched for growth.

Starts ``huddle serve`` on loopback (Postgres at ``$HUDDLE_TEST_POSTGRES_URL``
in a fresh schema, or SQLite with ``--backend sqlite`` or when Postgres is
unreachable), then for ``--duration`` seconds cycles calls through the whole
lifecycle at ``--rate`` cycles/s (:mod:`bench.soak.calls`) while
``huddle loadtest`` rooms join and leave (:mod:`bench.soak.media`), and samples
the server's RSS, open FDs, asyncio tasks and database connections every
``--sample-interval`` seconds (:mod:`bench.soak.probe`). Afterwards it waits
for the server to go idle, checks every call ended, and fits a line per
series over the samples after ``--warmup``::

    python -m bench.soak.run                    # 10 minutes, Postgres
    python -m bench.soak.run --duration 120 --backend sqlite --out var/soak

Writes ``soak.json`` and ``soak.txt`` (the summary it prints) to ``--out``.
Exit status 1 when a request or socket misbehaved, a media round failed, a
call was left unended, or the server logged an error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import statistics
import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from .calls import CallCycler
from .fit import linear_fit
from .media import MediaRooms
from .probe import Sample, ServerProbe

ROOT = Path(__file__).resolve().parents[2]
POSTGRES_URL = os.environ.get(
    "HUDDLE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
LIFECYCLE_OPS = ("initiate", "join", "leave", "decline", "end", "status")
# Growth over the fitted window below these is noise, not a trend.
TOLERANCE = {"rss_mib": 16.0, "open_fds": 8.0, "asyncio_tasks": 8.0, "db_connections": 2.0}
BETWEEN_ROUNDS_S = 2.0  # after a media round, before sampling "between"
RINGING_TIMEOUT_S = 5
DISCONNECT_GRACE_S = 2


@dataclass(frozen=True)
class SoakConfig:
    duration_s: float = 600.0
    backend: str = "postgres"
    rate: float = 4.0  # lifecycle cycles per second at most
    concurrency: int = 6
    sample_interval_s: float = 5.0
    warmup_s: float = 60.0
    media: bool = True
    media_rooms: int = 2
    media_publishers: int = 3
    media_room_s: float = 20.0
    settle_timeout_s: float = 60.0
    fd_slack: int = 4  # FDs over the idle baseline still counted "back"
    task_slack: int = 2


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@asynccontextmanager
async def database(backend: str, folder: Path) -> AsyncIterator[tuple[str, str, str | None]]:
    """(server database URL, backend description, admin URL for pg_stat_activity or None)."""
    if backend == "postgres":
        schema = f"huddle_soak_{uuid.uuid4().hex[:8]}"
        try:
            admin = await asyncpg.connect(POSTGRES_URL, timeout=5)
        except (OSError, asyncpg.PostgresError) as exc:
            note = f"sqlite (Postgres unreachable: {type(exc).__name__})"
            yield f"sqlite:///{folder}/soak.db", note, None
            return
        await admin.execute(f'CREATE SCHEMA "{schema}"')
        try:
            separator = "&" if "?" in POSTGRES_URL else "?"
            url = f"{POSTGRES_URL}{separator}search_path={schema}&application_name={schema}"
            yield url, f"postgres (schema {schema})", POSTGRES_URL
        finally:
            await admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            await admin.close()
        return
    yield f"sqlite:///{folder}/soak.db", "sqlite", None


@asynccontextmanager
async def server(database_url: str, log_path: Path) -> AsyncIterator[tuple[str, int]]:
    """A fresh ``huddle serve``: (base URL, pid); SIGTERM on the way out."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUDDLE_")}
    env.update(
        HUDDLE_PORT=str(port),
        HUDDLE_DATABASE_URL=database_url,
        HUDDLE_DEV="1",
        HUDDLE_ICE_HOSTS="127.0.0.1",
        HUDDLE_INITIATE_PER_MINUTE="100000",
        HUDDLE_RINGING_TIMEOUT=str(RINGING_TIMEOUT_S),
        HUDDLE_DISCONNECT_GRACE=str(DISCONNECT_GRACE_S),
        HUDDLE_SWEEP_INTERVAL="1",
        HUDDLE_LOG_LEVEL="WARNING",
        HUDDLE_WORKERS="1",  # one process: the probe samples its RSS, FDs and tasks
    )
    with log_path.open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "server.cli",
            "serve",
            env=env,
            cwd=ROOT,
            stdout=log,
            stderr=log,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            async with aiohttp.ClientSession() as session:
                for _ in range(300):
                    if process.returncode is not None:
                        raise RuntimeError(f"the server exited with {process.returncode}")
                    with contextlib.suppress(aiohttp.ClientError):
                        async with session.get(f"{base}/health") as response:
                            if response.status == 200:
                                break
                    await asyncio.sleep(0.1)
                else:
                    raise RuntimeError("the server did not become healthy in 30 s")
            yield base, process.pid
        finally:
            if process.returncode is None:
                process.terminate()
                try:
                    await asyncio.wait_for(process.wait(), timeout=20)
                except TimeoutError:
                    process.kill()
                    await process.wait()


def _percentile(values: list[float], q: int) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def _series(samples: list[Sample], name: str) -> list[float | None]:
    if name == "rss_mib":
        return [s.rss_bytes / 2**20 for s in samples]
    return [getattr(s, name) for s in samples]


def trends(samples: list[Sample], phases: tuple[str, ...]) -> dict[str, Any]:
    """Per series: the line through the samples of ``phases``, and a verdict."""
    window = [s for s in samples if s.phase in phases]
    out: dict[str, Any] = {}
    for name, tolerance in TOLERANCE.items():
        values = _series(window, name)
        points = [(s.t_s / 60, v) for s, v in zip(window, values, strict=True) if v is not None]
        fit = linear_fit([p[0] for p in points], [p[1] for p in points])
        if fit is None:
            out[name] = None
            continue
        span = points[-1][0] - points[0][0]
        growth = fit.growth(span)
        verdict = "flat" if growth < tolerance else ("grows" if fit.r2 >= 0.5 else "noisy")
        vals = [p[1] for p in points]
        out[name] = {
            "slope_per_min": round(fit.slope_per_min, 4),
            "r2": round(fit.r2, 3),
            "growth_over_window": round(growth, 2),
            "tolerance": tolerance,
            "verdict": verdict,
            "first": round(vals[0], 2),
            "last": round(vals[-1], 2),
            "min": round(min(vals), 2),
            "max": round(max(vals), 2),
            "window_minutes": round(span, 2),
            "samples": fit.samples,
        }
    return out


async def _sampler(
    probe: ServerProbe, interval: float, warmup_until: float, stop: asyncio.Event
) -> None:
    while not stop.is_set():
        phase = "warmup" if time.monotonic() < warmup_until else "load"
        try:
            await probe.sample(phase)
        except (aiohttp.ClientError, TimeoutError, OSError, asyncpg.PostgresError) as exc:
            print(f"soak: sample failed: {exc!r}", file=sys.stderr)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=interval)


def _own_fds(sample: Sample) -> int:
    """Open FDs besides the database pool's sockets (the pool shrinks only after 60 s idle)."""
    return sample.open_fds - (sample.db_connections or 0)


def _log_errors(log_path: Path) -> list[str]:
    lines = log_path.read_text(errors="replace").splitlines()
    return [line for line in lines if " ERROR " in line or " CRITICAL " in line]


async def run_soak(config: SoakConfig, out: Path, *, progress: bool = True) -> dict[str, Any]:
    """One soak; ``out`` (an existing folder) receives the server's log."""
    log_path = out / "server.log"

    def say(text: str) -> None:
        if progress:
            print(f"soak: {text}", file=sys.stderr, flush=True)

    async with (
        database(config.backend, out) as (database_url, backend, admin_url),
        server(database_url, log_path) as (base, pid),
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as session,
        ServerProbe(
            pid,
            base,
            session,
            postgres_url=admin_url,
            application_name=database_url.rsplit("application_name=", 1)[-1] if admin_url else None,
        ) as probe,
    ):
        say(f"server pid {pid} at {base}, {backend}")
        await probe.sample("idle")
        cycler = CallCycler(session, base, concurrency=config.concurrency, rate=config.rate)
        await cycler.prepare()
        baseline = await probe.sample("idle")
        media = (
            MediaRooms(
                base,
                rooms=config.media_rooms,
                publishers=config.media_publishers,
                room_seconds=config.media_room_s,
            )
            if config.media
            else None
        )
        stop, stop_sampling = asyncio.Event(), asyncio.Event()
        started = time.monotonic()
        warmup_until = started + config.warmup_s
        sampler = asyncio.create_task(
            _sampler(probe, config.sample_interval_s, warmup_until, stop_sampling)
        )

        async def between_rounds() -> None:
            # The load tester's peers are gone: what the server holds now
            # (besides the lifecycle cycles in flight) should not grow.
            await asyncio.sleep(BETWEEN_ROUNDS_S)
            with contextlib.suppress(aiohttp.ClientError, TimeoutError, OSError):
                await probe.sample("warmup" if time.monotonic() < warmup_until else "between")

        load = [asyncio.create_task(cycler.run(stop))]
        if media is not None:
            load.append(asyncio.create_task(media.run(stop, between_rounds)))
        say(f"cycling for {config.duration_s:g} s")
        done_at = started + config.duration_s
        while (left := done_at - time.monotonic()) > 0:
            await asyncio.sleep(min(left, 60.0))
            stats = cycler.stats
            say(
                f"{time.monotonic() - started:.0f} s: {sum(stats.completed.values())} cycles, "
                f"{stats.request_errors} request errors"
                + (f", {media.stats.rounds} media rounds" if media else "")
            )
        stop.set()
        await asyncio.gather(*load)
        load_s = time.monotonic() - started
        stop_sampling.set()
        await sampler

        # Idle again: sockets, peer connections and timers of the run must go.
        say("settling")
        settle_started = time.monotonic()

        def quiet(sample: Sample) -> bool:
            return _own_fds(sample) <= _own_fds(baseline) + config.fd_slack and (
                sample.asyncio_tasks is None
                or baseline.asyncio_tasks is None
                or sample.asyncio_tasks <= baseline.asyncio_tasks + config.task_slack
            )

        after = await probe.sample("settle")
        while time.monotonic() - settle_started < config.settle_timeout_s:
            # Unanswered and dropped calls end by the server's timers.
            if quiet(after) and time.monotonic() - settle_started > RINGING_TIMEOUT_S + 3:
                break
            await asyncio.sleep(1.0)
            after = await probe.sample("settle")
        settle_s = time.monotonic() - settle_started
        back_to_baseline = quiet(after)
        unended = await cycler.unended()
        if unended:
            await asyncio.sleep(RINGING_TIMEOUT_S + DISCONNECT_GRACE_S)
            cycler.call_ids = [c for c in cycler.call_ids if c[0] in set(unended)]
            unended = await cycler.unended()
    log_errors = _log_errors(log_path)

    stats = cycler.stats
    lifecycle = [v for op in LIFECYCLE_OPS for v in stats.latencies_s.get(op, [])]
    completed = sum(stats.completed.values())
    failed = sum(stats.failed.values())
    ms = 1000.0

    def latency(values: list[float]) -> dict[str, float | int | None]:
        p50, p99 = _percentile(values, 50), _percentile(values, 99)
        return {
            "n": len(values),
            "p50_ms": None if p50 is None else round(p50 * ms, 1),
            "p99_ms": None if p99 is None else round(p99 * ms, 1),
            "max_ms": round(max(values) * ms, 1) if values else None,
        }

    result: dict[str, Any] = {
        "config": asdict(config),
        "backend": backend,
        "load_seconds": round(load_s, 1),
        "settle_seconds": round(settle_s, 1),
        "calls": {
            "cycles": completed + failed,
            "completed": completed,
            "failed": failed,
            "by_scenario": dict(stats.completed),
            "failed_by_scenario": dict(stats.failed),
            "initiated": len(cycler.call_ids) if not unended else None,
            "unended": unended,
        },
        "requests": {
            "total": stats.requests,
            "errors": stats.request_errors,
            "error_rate": round(stats.request_errors / stats.requests, 6) if stats.requests else 0,
            "lifecycle_latency": latency(lifecycle),
            "ws_connect_latency": latency(stats.latencies_s.get("ws_connect", [])),
            "by_op": {op: latency(v) for op, v in sorted(stats.latencies_s.items())},
        },
        "errors": stats.errors,
        "media": asdict(media.stats) if media else None,
        "server_log_errors": log_errors[:20],
        "server_log_error_count": len(log_errors),
        "baseline": baseline.to_json(),
        "after": after.to_json(),
        "back_to_baseline": back_to_baseline,
        "trends": trends(probe.samples, ("load", "between")),
        "trends_between_rounds": trends(probe.samples, ("between",)) if media else None,
        "samples": [s.to_json() for s in probe.samples],
    }
    media_failed = media.stats.failed_rounds if media else 0
    # Growth is judged where no media peer is connected, when there are such points.
    judged = result["trends_between_rounds"] or result["trends"]
    growing = sorted(k for k, v in judged.items() if v is not None and v["verdict"] == "grows")
    result["growing"] = growing
    result["passed"] = (
        stats.request_errors == 0
        and failed == 0
        and not unended
        and media_failed == 0
        and not log_errors
        and back_to_baseline
        and not growing
    )
    return result


def summary_text(result: dict[str, Any]) -> str:
    calls, requests = result["calls"], result["requests"]
    life = requests["lifecycle_latency"]
    ws = requests["ws_connect_latency"]
    lines = [
        f"huddle soak: {'PASSED' if result['passed'] else 'FAILED'}",
        f"backend {result['backend']}; load {result['load_seconds']:g} s, "
        f"settled in {result['settle_seconds']:g} s",
        f"calls     {calls['completed']} cycles completed, {calls['failed']} failed "
        f"({', '.join(f'{k} {v}' for k, v in sorted(calls['by_scenario'].items()))}); "
        f"{len(calls['unended'])} left unended",
        f"requests  {requests['total']}, {requests['errors']} errors "
        f"(rate {requests['error_rate']:.4%}); lifecycle p50 {life['p50_ms']} ms, "
        f"p99 {life['p99_ms']} ms, max {life['max_ms']} ms; "
        f"socket connect p99 {ws['p99_ms']} ms",
    ]
    media = result["media"]
    if media:
        lines.append(
            f"media     {media['rounds']} rounds, {media['failed_rounds']} failed; "
            f"{media['peers']} peers ({media['peers_failed']} failed), "
            f"{media['tracks']} tracks ({media['tracks_missing']} missing), "
            f"{media['packets_received']:,} packets, {media['packets_lost']:,} lost"
        )
    lines.append(f"server    {result['server_log_error_count']} ERROR lines in its log")
    lines.append(
        "idle      "
        + ("back to the baseline" if result["back_to_baseline"] else "NOT back to the baseline")
        + (f"; growing: {', '.join(result['growing'])}" if result["growing"] else "")
    )
    base, after = result["baseline"], result["after"]
    tables = [("every sample after the warm-up", result["trends"])]
    if result.get("trends_between_rounds"):
        tables.append(("between media rounds (no peer connected)", result["trends_between_rounds"]))
    for title, table in tables:
        lines.append("")
        lines.append(f"trend over {title}:")
        lines.append(
            f"{'series':<16}{'idle before':>12}{'idle after':>12}{'slope/min':>12}{'r2':>7}"
            f"{'growth':>10}  verdict"
        )
        for name, trend in table.items():
            key = "rss_bytes" if name == "rss_mib" else name
            scale = 2**20 if name == "rss_mib" else 1

            def fmt(v: Any, scale: float = scale) -> str:
                return "-" if v is None else f"{v / scale:.1f}"

            before_v, after_v = fmt(base.get(key)), fmt(after.get(key))
            if trend is None:
                lines.append(f"{name:<16}{before_v:>12}{after_v:>12}{'-':>12}")
                continue
            lines.append(
                f"{name:<16}{before_v:>12}{after_v:>12}{trend['slope_per_min']:>12.3f}"
                f"{trend['r2']:>7.2f}{trend['growth_over_window']:>10.1f}  {trend['verdict']}"
                f" (tolerance {trend['tolerance']:g}, {trend['samples']} samples)"
            )
    for error in result["errors"][:5] + result["server_log_errors"][:5]:
        lines.append(f"  ! {error}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=600.0, help="seconds (default 600)")
    parser.add_argument("--backend", choices=["postgres", "sqlite"], default="postgres")
    parser.add_argument("--rate", type=float, default=4.0, help="cycles per second at most")
    parser.add_argument("--concurrency", type=int, default=6, help="caller/callee pairs")
    parser.add_argument("--sample-interval", type=float, default=5.0, help="seconds")
    parser.add_argument("--warmup", type=float, default=60.0, help="seconds left out of the fit")
    parser.add_argument("--no-media", action="store_true", help="no load-tester rooms")
    parser.add_argument("--media-rooms", type=int, default=2)
    parser.add_argument("--media-publishers", type=int, default=3)
    parser.add_argument("--media-room-seconds", type=float, default=20.0)
    parser.add_argument("--out", type=Path, default=ROOT / "var" / "soak")
    args = parser.parse_args()
    if not 10 <= args.duration <= 24 * 3600:
        parser.error("--duration must be in [10, 86400] seconds")
    config = SoakConfig(
        duration_s=args.duration,
        backend=args.backend,
        rate=args.rate,
        concurrency=args.concurrency,
        sample_interval_s=args.sample_interval,
        warmup_s=min(args.warmup, args.duration / 2),
        media=not args.no_media,
        media_rooms=args.media_rooms,
        media_publishers=args.media_publishers,
        media_room_s=args.media_room_seconds,
    )
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover
        pass
    args.out.mkdir(parents=True, exist_ok=True)
    result = asyncio.run(run_soak(config, args.out))
    text = summary_text(result)
    print(text)
    (args.out / "soak.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "soak.txt").write_text(text + "\n")
    print(f"\nreports: {args.out / 'soak.json'}, {args.out / 'soak.txt'}")
    sys.exit(0 if result["passed"] else 1)


if __name__ == "__main__":
    main()
