"""Profile a room forming: server CPU per joining member, and where it goes.

A small, bounded profiling harness (not a timed test, not the benchmark):
starts the benchmark server (:mod:`bench.sfu.server`, Huddle's SFU exactly as
``huddle serve`` wires it, minus HTTP and the database) in a child process,
joins ``--members`` load-test peers (:mod:`bench.sfu.run`'s worker, the same
:class:`media.peers.SfuClient` the benchmark uses) into one room where
everyone publishes, and reports the server's CPU time from the first join
until every member receives video from every other, per member, with the
number of subscribe offers the SFU sent. ``--cprofile`` runs the server
under cProfile (which inflates Python time: read it for where the time goes,
not how much) and prints its top functions.

    nice -n 10 .venv/bin/python -m bench.sfu.joinprofile --members 6 --rounds 2 --cprofile

``--pattern`` chooses how members arrive (see ``--help``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pstats
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.sfu.run import Worker, cpu_seconds_fine, free_port

ROOT = Path(__file__).resolve().parents[2]


def start_server(
    port: int, profile_to: str | None, root: Path = ROOT
) -> tuple[subprocess.Popen[str], int]:
    env = dict(os.environ)
    if profile_to:
        env["HUDDLE_BENCH_CPROFILE"] = profile_to
        env["HUDDLE_BENCH_CPROFILE_CPU"] = "1"  # CPU time, not wall time
    cmd = [sys.executable, "-m", "bench.sfu.server", "--mode", "huddle", "--port", str(port)]
    proc = subprocess.Popen(
        cmd, cwd=root, env=env, stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.startswith("READY"):
            return proc, int(line.split()[2])
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise RuntimeError("the server did not start")


def receives_everyone(snap: dict[str, Any], ids: list[str]) -> bool:
    for pid in ids:
        video = snap.get(pid, {}).get("kinds", {}).get("video")
        if not video or video["tracks"] < len(ids) - 1:
            return False
        if not all(f > 0 for f in video["per_track_frames"]):
            return False
    return True


async def server_stats(worker: Worker, port: int) -> dict[str, Any]:
    async with worker.session.get(f"http://127.0.0.1:{port}/stats") as response:
        data: dict[str, Any] = await response.json()
        return data


async def form_room(
    worker: Worker,
    port: int,
    pid: int,
    call_id: str,
    members: int,
    pattern: str,
    limit_s: float,
    verbose: bool,
) -> dict[str, Any]:
    ids = [f"{call_id}-m{i}" for i in range(members)]
    stats0 = await server_stats(worker, port)
    cpu0, t0 = cpu_seconds_fine(pid), time.monotonic()
    deadline = time.monotonic() + limit_s
    if pattern == "burst":
        await asyncio.gather(*(worker.join(call_id, i, True, "av") for i in ids))
    else:
        for n, i in enumerate(ids):
            await worker.join(call_id, i, True, "av")
            # paced: as bench.sfu.run's rooms, each member receives the
            # earlier ones before the next joins.
            while pattern == "paced" and not receives_everyone(
                await worker.snapshot(ids[: n + 1]), ids[: n + 1]
            ):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"room {call_id} did not form within {limit_s} s")
                await asyncio.sleep(0.05)
            if verbose:
                print(f"  {i} in, all receiving at {time.monotonic() - t0:.2f} s", flush=True)
    while not receives_everyone(await worker.snapshot(ids), ids):
        if time.monotonic() > deadline:
            raise RuntimeError(f"room {call_id} did not form within {limit_s} s")
        await asyncio.sleep(0.05)
    cpu1, t1 = cpu_seconds_fine(pid), time.monotonic()
    stats1 = await server_stats(worker, port)
    # Media flows while the room forms: the forwarding cost per packet, from
    # a window once formed, is subtracted for the set-up alone.
    await asyncio.sleep(1.0)
    cpu2, t2, stats2 = cpu_seconds_fine(pid), time.monotonic(), await server_stats(worker, port)
    await asyncio.sleep(2.0)
    cpu3, t3, stats3 = cpu_seconds_fine(pid), time.monotonic(), await server_stats(worker, port)
    per_packet = (cpu3 - cpu2) / max(1, stats3["packets_out"] - stats2["packets_out"])
    forwarded = stats1["packets_out"] - stats0["packets_out"]
    for i in ids:
        await worker.leave(i)
    offers = int(stats1.get("offers_sent", 0)) - int(stats0.get("offers_sent", 0))
    return {
        "members": members,
        "wall_s": t1 - t0,
        "cpu_ms_per_member": (cpu1 - cpu0) / members * 1e3,
        "setup_ms_per_member": (cpu1 - cpu0 - forwarded * per_packet) / members * 1e3,
        "offers_per_member": offers / members,
        "steady_core": (cpu3 - cpu2) / (t3 - t2),
    }


async def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    port = free_port()
    proc, pid = start_server(port, args.profile_to, Path(args.server_root or ROOT))
    worker = Worker(port, ice_host="127.0.0.1")
    results = []
    try:
        for r in range(args.rounds):
            res = await form_room(
                worker, port, pid, f"jp{r}", args.members, args.pattern, args.limit, args.verbose
            )
            results.append(res)
            print(
                f"round {r}: {res['members']} members, formed in {res['wall_s']:.2f} s, "
                f"server {res['cpu_ms_per_member']:.1f} ms CPU/member "
                f"({res['setup_ms_per_member']:.1f} less forwarding), "
                f"{res['offers_per_member']:.1f} subscribe offers/member, "
                f"then {100 * res['steady_core']:.1f} % of a core forwarding",
                flush=True,
            )
            await asyncio.sleep(1.0)
    finally:
        await worker.close()
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(60)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--members", type=int, default=6, help="room size (at most 8)")
    parser.add_argument("--rounds", type=int, default=2, help="rooms formed, one after another")
    parser.add_argument(
        "--pattern",
        choices=("paced", "back-to-back", "burst"),
        default="paced",
        help="paced: each member receives the earlier ones before the next joins (as "
        "bench.sfu.run's rooms); back-to-back: one join after another; burst: all at once",
    )
    parser.add_argument("--limit", type=float, default=60.0, help="s to wait for a room")
    parser.add_argument(
        "--server-root",
        help="run the server from this checkout instead (e.g. an exported older commit, "
        "for a before/after comparison in one sitting; it needs media/_udpsend built)",
    )
    parser.add_argument("--verbose", action="store_true", help="print each paced join")
    parser.add_argument("--cprofile", action="store_true", help="profile the server")
    parser.add_argument("--top", type=int, default=35, help="functions to print")
    parser.add_argument("--save", help="also write the server's profile here (pstats)")
    args = parser.parse_args(argv)
    if not 2 <= args.members <= 8:
        parser.error("--members must be 2..8 (a small, bounded room)")
    if not 1 <= args.rounds <= 5:
        parser.error("--rounds must be 1..5")
    with tempfile.TemporaryDirectory() as tmp:
        args.profile_to = str(Path(tmp) / "server.prof") if args.cprofile else None
        results = asyncio.run(run(args))
        per_member = [r["cpu_ms_per_member"] for r in results]
        setup = [r["setup_ms_per_member"] for r in results]
        print(f"server CPU ms/member: {', '.join(f'{x:.1f}' for x in per_member)}")
        print(f"less forwarding: {', '.join(f'{x:.1f}' for x in setup)}")
        if args.profile_to and Path(args.profile_to).exists():
            if args.save:
                shutil.copyfile(args.profile_to, args.save)
            stats = pstats.Stats(args.profile_to)
            stats.sort_stats("tottime").print_stats(args.top)
            stats.sort_stats("cumulative").print_stats(args.top)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
