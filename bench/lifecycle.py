"""Call lifecycle throughput: initiate + join + leave + leave per second, with latency.

Starts a real ``huddle serve`` process on loopback (SQLite file, or a fresh
Postgres schema), then runs ``--calls`` full call cycles with ``--concurrency``
callers in flight, bounded by ``--max-seconds``. Prints a Markdown table row.

    python -m bench.lifecycle --backend sqlite --calls 2000 --concurrency 16
    python -m bench.lifecycle --backend postgres --calls 2000 --concurrency 16
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import asyncpg

POSTGRES_URL = os.environ.get(
    "HUDDLE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@asynccontextmanager
async def database(backend: str) -> AsyncIterator[str]:
    if backend == "sqlite":
        with tempfile.TemporaryDirectory() as folder:
            yield f"sqlite:///{folder}/bench.db"
        return
    schema = f"huddle_bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(POSTGRES_URL)
    await admin.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield f"{POSTGRES_URL}?search_path={schema}"
    finally:
        await admin.execute(f'DROP SCHEMA "{schema}" CASCADE')
        await admin.close()


@asynccontextmanager
async def server(database_url: str) -> AsyncIterator[str]:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUDDLE_")}
    env.update(
        HUDDLE_PORT=str(port),
        HUDDLE_DATABASE_URL=database_url,
        HUDDLE_INITIATE_PER_MINUTE="100000",
        HUDDLE_LOG_LEVEL="WARNING",
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "server.cli",
        "serve",
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
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
                await asyncio.sleep(0.1)
            else:
                raise RuntimeError("server did not become healthy in 30 s")
        yield base
    finally:
        process.terminate()
        await asyncio.wait_for(process.wait(), timeout=15)


async def run(backend: str, calls: int, concurrency: int, max_seconds: float) -> dict[str, float]:
    async with database(backend) as url, server(url) as base:
        connector = aiohttp.TCPConnector(limit=concurrency * 2)
        async with aiohttp.ClientSession(base, connector=connector) as session:

            async def token(name: str) -> tuple[str, dict[str, str]]:
                async with session.post("/v1/dev/token", json={"name": name}) as response:
                    body = await response.json()
                return body["user_id"], {"Authorization": f"Bearer {body['token']}"}

            pairs = []
            for i in range(concurrency):
                _, caller = await token(f"caller{i}")
                callee_id, callee = await token(f"callee{i}")
                async with session.post(
                    "/v1/conversations", headers=caller, json={"member_ids": [callee_id]}
                ) as response:
                    conversation_id = (await response.json())["conversation_id"]
                pairs.append((caller, callee, callee_id, conversation_id))

            cycle_latency: list[float] = []
            request_latency: list[float] = []
            errors = 0
            remaining = calls
            deadline = time.monotonic() + max_seconds

            async def post(path: str, headers: dict[str, str], body: object = None) -> object:
                nonlocal errors
                started = time.perf_counter()
                async with session.post(path, headers=headers, json=body) as response:
                    payload = await response.json()
                    if response.status >= 300:
                        errors += 1
                request_latency.append(time.perf_counter() - started)
                return payload

            async def worker(
                caller: dict[str, str], callee: dict[str, str], callee_id: str, conversation_id: str
            ) -> None:
                nonlocal remaining
                while remaining > 0 and time.monotonic() < deadline:
                    remaining -= 1
                    started = time.perf_counter()
                    call = await post(
                        "/v1/calls/initiate",
                        caller,
                        {
                            "call_type": "video",
                            "conversation_id": conversation_id,
                            "callee_ids": [callee_id],
                        },
                    )
                    assert isinstance(call, dict)
                    call_id = call["call_id"]
                    await post(f"/v1/calls/{call_id}/join", callee)
                    await post(f"/v1/calls/{call_id}/leave", callee)
                    await post(f"/v1/calls/{call_id}/leave", caller)
                    cycle_latency.append(time.perf_counter() - started)

            started = time.perf_counter()
            await asyncio.gather(*(worker(*pair) for pair in pairs))
            elapsed = time.perf_counter() - started

    def pct(values: list[float], q: float) -> float:
        return statistics.quantiles(values, n=100)[int(q) - 1] * 1000

    return {
        "cycles": len(cycle_latency),
        "seconds": elapsed,
        "cycles_per_s": len(cycle_latency) / elapsed,
        "requests_per_s": len(request_latency) / elapsed,
        "request_p50_ms": pct(request_latency, 50),
        "request_p99_ms": pct(request_latency, 99),
        "cycle_p50_ms": pct(cycle_latency, 50),
        "cycle_p99_ms": pct(cycle_latency, 99),
        "errors": errors,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--max-seconds", type=float, default=120.0)
    args = parser.parse_args()
    result = asyncio.run(run(args.backend, args.calls, args.concurrency, args.max_seconds))
    print(
        "| backend | concurrency | cycles | cycles/s | requests/s | request p50 / p99 ms "
        "| cycle p50 / p99 ms | errors |"
    )
    print("|---|---|---|---|---|---|---|---|")
    print(
        f"| {args.backend} | {args.concurrency} | {result['cycles']:.0f} "
        f"| {result['cycles_per_s']:.0f} | {result['requests_per_s']:.0f} "
        f"| {result['request_p50_ms']:.1f} / {result['request_p99_ms']:.1f} "
        f"| {result['cycle_p50_ms']:.1f} / {result['cycle_p99_ms']:.1f} | {result['errors']:.0f} |"
    )


if __name__ == "__main__":
    main()
