"""Signaling throughput and delivery latency, on one node and on two nodes via Redis.

Starts real ``huddle serve`` processes on loopback (one with SQLite and the
in-process bus; two sharing a fresh Postgres schema and Redis), connects
``--pairs`` P2P calls (two sockets each; on two nodes the caller sits on node 1
and the callee on node 2), then measures:

- throughput: every socket sends ``ice_candidate`` messages to its peer in
  windows of ``--window`` (so no receiver's send queue overflows), for at most
  ``--messages`` per socket and ``--seconds``; messages delivered per second;
- latency: every socket sends one ``offer`` every ``--interval`` seconds for
  ``--seconds``; send-to-receive time in the same process, p50/p99.

    python -m bench.signaling.run --pairs 60
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from signaling.client import SignalingClient

ROOT = Path(__file__).resolve().parents[2]
SECRET = "bench-secret-that-is-long-enough-for-hs256"
POSTGRES_URL = os.environ.get(
    "HUDDLE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("HUDDLE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
SDP = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"
CANDIDATE = {
    "candidate": "candidate:1 1 udp 2122252543 127.0.0.1 50000 typ host",
    "sdpMid": "0",
    "sdpMLineIndex": 0,
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def servers(
    count: int, database_url: str, redis_url: str | None, logdir: Path
) -> Iterator[list[str]]:
    processes: list[subprocess.Popen[bytes]] = []
    urls: list[str] = []
    try:
        for index in range(count):
            port = free_port()
            env = {
                **os.environ,
                "HUDDLE_PORT": str(port),
                "HUDDLE_DATABASE_URL": database_url,
                "HUDDLE_JWT_SECRET": SECRET,
                "HUDDLE_DEV": "1",
                "HUDDLE_NODE_ID": f"bench{index + 1}-{uuid.uuid4().hex[:6]}",
                "HUDDLE_INITIATE_PER_MINUTE": "100000",
                "HUDDLE_MESSAGES_PER_SECOND": "10000",
                "HUDDLE_LOG_LEVEL": "WARNING",
            }
            env.pop("HUDDLE_REDIS_URL", None)
            if redis_url:
                env["HUDDLE_REDIS_URL"] = redis_url
            with (logdir / f"node{index + 1}.log").open("wb") as log:
                processes.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "server.cli", "serve"],
                        cwd=ROOT,
                        env=env,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                    )
                )
            url = f"http://127.0.0.1:{port}"
            _wait_healthy(url, processes[-1])
            urls.append(url)
        yield urls
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()


def _wait_healthy(url: str, process: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"server at {url} exited with {process.returncode}")
        with contextlib.suppress(OSError), urllib.request.urlopen(url + "/health", timeout=1):
            return
        time.sleep(0.1)
    raise SystemExit(f"server at {url} not healthy in {timeout:g} s")


@asynccontextmanager
async def postgres_schema() -> AsyncIterator[str]:
    schema = f"huddle_bench_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(POSTGRES_URL, timeout=5)
    try:
        await admin.execute(f'CREATE SCHEMA "{schema}"')
        yield f"{POSTGRES_URL}?search_path={schema}"
    finally:
        await admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await admin.close()


@dataclass
class Pair:
    caller: SignalingClient
    callee: SignalingClient
    caller_id: str
    callee_id: str


async def _post(session: aiohttp.ClientSession, url: str, token: str | None, body: Any) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with session.post(url, json=body, headers=headers) as response:
        payload = await response.json()
        if response.status >= 300:
            raise SystemExit(f"{url}: {response.status} {payload}")
        return payload


async def connect_pairs(urls: list[str], pairs: int) -> tuple[list[Pair], aiohttp.ClientSession]:
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    api = urls[0]
    result: list[Pair] = []
    for _ in range(pairs):
        ana = await _post(session, f"{api}/v1/dev/token", None, {"name": "ana"})
        bob = await _post(session, f"{api}/v1/dev/token", None, {"name": "bob"})
        conversation = await _post(
            session, f"{api}/v1/conversations", ana["token"], {"member_ids": [bob["user_id"]]}
        )
        call = await _post(
            session,
            f"{api}/v1/calls/initiate",
            ana["token"],
            {
                "call_type": "audio",
                "conversation_id": conversation["conversation_id"],
                "callee_ids": [bob["user_id"]],
            },
        )
        call_id = call["call_id"]
        await _post(session, f"{urls[-1]}/v1/calls/{call_id}/join", bob["token"], {})
        caller = await SignalingClient.open(urls[0], call_id, ana["token"], session=session)
        callee = await SignalingClient.open(urls[-1], call_id, bob["token"], session=session)
        await caller.receive("presence", timeout=10)  # the callee is online, on either node
        result.append(Pair(caller, callee, ana["user_id"], bob["user_id"]))
    return result, session


async def throughput(pairs: list[Pair], *, window: int, messages: int, seconds: float) -> float:
    """Messages delivered per second, all sockets sending at once in windows."""
    deadline = time.monotonic() + seconds
    delivered = 0

    async def pump(sender: SignalingClient, receiver: SignalingClient, target: str) -> None:
        nonlocal delivered
        message = {"type": "ice_candidate", "target_id": target, "candidate": CANDIDATE}
        text = json.dumps(message)
        sent = 0
        while sent < messages and time.monotonic() < deadline:
            batch = min(window, messages - sent)
            for _ in range(batch):
                await sender.send_raw(text)
            for _ in range(batch):
                await receiver.receive("ice_candidate", timeout=30)
            sent += batch
            delivered += batch

    started = time.monotonic()
    await asyncio.gather(
        *(pump(p.caller, p.callee, p.callee_id) for p in pairs),
        *(pump(p.callee, p.caller, p.caller_id) for p in pairs),
    )
    return delivered / (time.monotonic() - started)


async def latency(pairs: list[Pair], *, interval: float, seconds: float) -> list[float]:
    """Send-to-receive times (s) of offers sent every ``interval`` by every socket."""
    samples: list[float] = []
    rounds = max(1, int(seconds / interval))

    async def ping(sender: SignalingClient, receiver: SignalingClient, target: str) -> None:
        for number in range(rounds):
            sent_at = time.perf_counter()
            await sender.send({"type": "offer", "target_id": target, "sdp": SDP, "id": number})
            await receiver.receive("offer", timeout=30, where=lambda m, n=number: m["id"] == n)
            samples.append(time.perf_counter() - sent_at)
            await asyncio.sleep(max(0.0, interval - (time.perf_counter() - sent_at)))

    await asyncio.gather(
        *(ping(p.caller, p.callee, p.callee_id) for p in pairs),
        *(ping(p.callee, p.caller, p.caller_id) for p in pairs),
    )
    return samples


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def scenario(name: str, urls: list[str], args: argparse.Namespace) -> dict[str, Any]:
    pairs, session = await connect_pairs(urls, args.pairs)
    try:
        rate = await throughput(
            pairs, window=args.window, messages=args.messages, seconds=args.seconds
        )
        samples = await latency(pairs, interval=args.interval, seconds=args.seconds)
    finally:
        for pair in pairs:
            await pair.caller.close()
            await pair.callee.close()
        await session.close()
    result = {
        "scenario": name,
        "connections": 2 * args.pairs,
        "throughput_msgs_per_s": round(rate),
        "latency_samples": len(samples),
        "latency_p50_ms": round(1000 * statistics.median(samples), 2),
        "latency_p99_ms": round(1000 * percentile(samples, 0.99), 2),
        "offered_rate_msgs_per_s": round(2 * args.pairs / args.interval),
    }
    print(json.dumps(result), flush=True)
    return result


async def main_async(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="huddle-bench-") as tmp:
        logdir = Path(tmp)
        if "one" in args.scenarios:
            with servers(1, f"sqlite:///{tmp}/huddle.db", None, logdir) as urls:
                await scenario("one node, in-process bus", urls, args)
        if "two" in args.scenarios:
            async with postgres_schema() as database_url:
                with servers(2, database_url, REDIS_URL, logdir) as urls:
                    await scenario("two nodes, Redis bus", urls, args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=60, help="P2P calls (2 sockets each)")
    parser.add_argument("--window", type=int, default=20, help="in-flight messages per socket")
    parser.add_argument("--messages", type=int, default=2000, help="max messages per socket")
    parser.add_argument("--seconds", type=float, default=10.0, help="max seconds per phase")
    parser.add_argument("--interval", type=float, default=0.1, help="latency: s between sends")
    parser.add_argument("--scenarios", nargs="+", default=["one", "two"], choices=["one", "two"])
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover
        pass
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
