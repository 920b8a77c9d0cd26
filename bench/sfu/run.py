"""Forwarding benchmark: 1 publisher → N subscribers, and rooms where everyone publishes.

Starts the server pinned to core 0 (``bench.sfu.server``: Huddle's SFU or a
naive decode/re-encode relay; or Janus 1.1.2's VideoRoom, :mod:`bench.sfu.janus`)
and drives it from load-generator worker processes pinned to core 1. A
publisher sends pre-encoded ~1 Mbps VP8 640x480 30 fps, plus Opus where the
scenario says so (:mod:`bench.sfu.clips`), paced in real time and answering
PLIs; subscribers never decode (:class:`bench.sfu.client.BenchClient`, an
:class:`media.loadtest.sfuclient.SfuClient`). The same peers talk to every server; only
the signaling differs. Scenarios, in order: fan-out with video only
(``--subscribers``), fan-out with video + Opus (``--av-subscribers``), rooms
(``--room``). For each subscriber count it waits until every subscriber
receives video, warms up, then measures over a fixed window:

- server CPU (``utime + stime`` of the server process, all threads, from
  ``/proc/<pid>/stat``) and load-generator CPU the same way;
- forwarded RTP packets: the sum of what the subscribers received (audio +
  video, RTX included), so packets, not frames;
- subscriber video frame rate (mean and worst) and packet loss;
- µs of server CPU per forwarded packet, absolute and marginal between
  subscriber counts; the fixed cost at 1 → 1;
- the receive path (``--publishers K``): K publishers of video, each alone in
  its own call, nobody subscribed; the server's CPU above idle over K times
  the publisher's packet rate (what one subscriber receives at 1 → 1) is the
  cost of taking in one packet, with everything a publisher costs the server
  (RTCP, congestion feedback, NACK tracking) included;
- the setup CPU of the subscribers that joined for this point (server CPU
  while they joined, less the previous steady rate);
- then ``--late-joins`` late joiners, one at a time: time from joining to the
  first keyframe / frame of each kind, and the server CPU each one cost.

Every wait is bounded; everything stays on loopback with no STUN server
(Janus, and ``--netns``, in a private network namespace: see
:mod:`bench.sfu.janus`). ``python -m bench.sfu.compare`` puts runs side by side.

    python -m bench.sfu.run --mode huddle
    python -m bench.sfu.run --mode janus --event-loops 1
    python -m bench.sfu.run --mode naive --subscribers '' --av-subscribers 0,1,8 --room 0
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import logging
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.sfu.janus import NETNS_ENV, NETNS_HOST, in_netns, netns_command

ROOT = Path(__file__).resolve().parents[2]
CLK_TCK = os.sysconf("SC_CLK_TCK")
SERVER_CORE = 0
GENERATOR_CORE = 1
LATE_JOIN_SPACING = 1.0  # s between late joiners (see late_joins)

logger = logging.getLogger("bench.sfu.run")


# --- process accounting -----------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads, live or exited), in seconds."""
    return _ticks(Path(f"/proc/{pid}/stat").read_text()) / CLK_TCK


def _ticks(stat_text: str) -> int:
    fields = stat_text[stat_text.rfind(")") + 2 :].split()
    return int(fields[11]) + int(fields[12])


def cpu_seconds_fine(pid: int) -> float:
    """CPU time of a process, all threads live or exited, in ns resolution.

    For short intervals (one join), where the clock ticks (10 ms) of
    :func:`cpu_seconds` are too coarse. Linux's CPU-time clock of another
    process (what ``clock_getcpuclockid(pid)`` returns, which Python does
    not wrap: ``(~pid << 3) | CPUCLOCK_SCHED``) sums every thread's run
    time, including threads that have exited.
    """
    try:
        return time.clock_gettime(((~pid) << 3) | 2)
    except OSError:
        return cpu_seconds(pid)


def loadavg() -> tuple[float, float, float]:
    return os.getloadavg()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# --- worker: holds the peers ------------------------------------------------


class Worker:
    """Publishers and subscribers of one load-generator process."""

    def __init__(
        self, port: int, *, count_only: bool = True, mode: str = "huddle", ice_host: str
    ) -> None:
        import aiohttp

        from bench.sfu.clips import audio_clip, video_clip
        from media.aiortc_compat import restrict_host_addresses

        restrict_host_addresses([ice_host])
        self.port = port
        self.mode = mode
        self.count_only = count_only
        self.video = video_clip()
        self.audio = audio_clip()
        # No connection limit: every Janus participant holds a long poll open.
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        self.peers: dict[str, Any] = {}  # id -> (client, ws or JanusPeer, pump task, joined_at)

    def _client(self, participant_id: str, send: Any, media: str) -> Any:
        from aiortc import RTCConfiguration

        from bench.sfu.client import BenchClient

        return BenchClient(
            participant_id,
            send,
            rtc_configuration=RTCConfiguration(iceServers=[]),
            video=self.video if media in ("video", "av") else None,
            audio=self.audio if media == "av" else None,
            # Header-only counting (media.loadtest.rtpcount): aiortc's receive path
            # would make the generator, not the server, the bottleneck.
            count_only=self.count_only,
        )

    async def join(self, call_id: str, participant_id: str, publish: bool, media: str) -> None:
        """``media``: what a publisher sends, "av" (VP8 + Opus) or "video"."""
        if self.mode == "janus":
            await self._join_janus(call_id, participant_id, publish, media)
            return
        joined_at = time.monotonic()
        ws = await self.session.ws_connect(
            f"http://127.0.0.1:{self.port}/ws/{call_id}/{participant_id}",
            heartbeat=None,
            max_msg_size=4 * 1024 * 1024,
        )

        async def send(message: dict[str, Any]) -> None:
            await ws.send_json(message)

        # A subscriber publishes nothing (a `subscribe` message admits it).
        client = self._client(participant_id, send, media if publish else "none")

        async def pump() -> None:
            async for msg in ws:
                if msg.type.name != "TEXT":
                    return
                client.deliver(json.loads(msg.data))

        task = asyncio.get_running_loop().create_task(pump())
        self.peers[participant_id] = (client, ws, task, joined_at)
        await client.publish()

    async def _join_janus(
        self, call_id: str, participant_id: str, publish: bool, media: str
    ) -> None:
        from bench.sfu.janus import BASE_PATH, JanusPeer

        joined_at = time.monotonic()
        # A publisher also subscribes to the room's other publishers (in a
        # room where everyone publishes; in fan-out there are none).
        peer = JanusPeer(
            self.session,
            f"http://127.0.0.1:{self.port}{BASE_PATH}",
            call_id,
            participant_id,
            subscribe=True,
        )
        await peer.open()
        client = self._client(participant_id, peer.send, media if publish else "none")
        peer.deliver = client.deliver
        self.peers[participant_id] = (client, peer, None, joined_at)
        if publish:
            await client.publish()  # the offer goes to Janus as joinandconfigure
        else:
            await peer.subscribe_room()  # no publish connection at all

    async def leave(self, participant_id: str) -> None:
        entry = self.peers.pop(participant_id, None)
        if entry is None:
            return
        client, ws, task, _ = entry
        await ws.close()  # a WebSocket, or a JanusPeer (destroys its session)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await client.close()

    async def snapshot(self, ids: list[str] | None) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for pid, (client, ws_or_peer, _, joined_at) in list(self.peers.items()):
            if ids is not None and pid not in ids:
                continue
            kinds: dict[str, dict[str, Any]] = {}
            for kind in ("audio", "video"):
                tracks = [s for s in client._current.values() if s.kind == kind]
                firsts = [s.first_frame_at for s in tracks if s.first_frame_at is not None]
                kinds[kind] = {
                    "packets": 0,
                    "lost": 0,
                    "frames": sum(s.frames for s in tracks),
                    "per_track_frames": [s.frames for s in tracks],
                    "keyframes": sum(s.keyframes for s in tracks),
                    "gaps": sum(s.gaps for s in tracks),
                    "tracks": len(tracks),
                    "first_frame_at": min(firsts) if firsts else None,
                    "announced_to_first": min(
                        (d for s in tracks if (d := s.first_frame_delay) is not None),
                        default=None,
                    ),
                    "first_keyframe_at": client.first_keyframe_at.get(kind),
                }
            if client.counter is not None:
                for kind, entry in kinds.items():
                    totals = client.counter.totals(kind)
                    entry["packets"] = totals["packets"]
                    entry["lost"] = totals["lost"]
                    if totals["rtx"]:
                        entry["rtx"] = totals["rtx"]
            # Otherwise read the receivers' own counters: getStats() reports a
            # media stream and its RTX stream under one id, so one hides the other.
            for transceiver in client.subscribe_pc.getTransceivers():
                if client.counter is not None:
                    break
                receiver = transceiver.receiver
                streams = getattr(receiver, "_RTCRtpReceiver__remote_streams", {})
                rtx = set(getattr(receiver, "_RTCRtpReceiver__rtx_ssrc", {}))
                target = kinds.get(str(transceiver.kind))
                if target is None:
                    continue
                for ssrc, stream in list(streams.items()):
                    target["packets"] += stream.packets_received
                    if ssrc in rtx:
                        target["rtx"] = target.get("rtx", 0) + stream.packets_received
                    else:
                        target["lost"] += stream.packets_lost
            publisher = client.tracks.get("video")
            receivers = [t.receiver for t in client.subscribe_pc.getTransceivers()]
            out[pid] = {
                # Receivers aiortc never started (a negotiation race): their
                # packets are dropped by the client's RTP router.
                "unstarted": sum(
                    1 for r in receivers if not getattr(r, "_RTCRtpReceiver__started", True)
                ),
                "subscribe_state": client.subscribe_pc.connectionState,
                "subscribe_connected_at": client.subscribe_connected_at,
                "joined_at": joined_at,
                "kinds": kinds,
                "plis_sent": client.plis_sent,
                "keyframe_requests": publisher.keyframe_requests if publisher else 0,
                "keyframes_forced": publisher.keyframes_forced if publisher else 0,
                "errors": list(getattr(ws_or_peer, "errors", []))[-3:],
            }
        return out

    async def close(self) -> None:
        for pid in list(self.peers):
            await self.leave(pid)
        await self.session.close()


async def worker_main(
    port: int, *, count_only: bool = True, mode: str = "huddle", ice_host: str = "127.0.0.1"
) -> None:
    """Serve JSON-line commands from stdin, one reply line per command."""
    worker = Worker(port, count_only=count_only, mode=mode, ice_host=ice_host)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    def reply(data: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(data) + "\n")
        sys.stdout.flush()

    reply({"ready": os.getpid()})
    try:
        while True:
            line = await reader.readline()
            if not line:
                return
            command = json.loads(line)
            op = command["op"]
            try:
                if op == "join":
                    for pid in command["ids"]:
                        await worker.join(
                            command["call"], pid, command["publish"], command.get("media", "av")
                        )
                    reply({"ok": True})
                elif op == "leave":
                    for pid in command["ids"]:
                        await worker.leave(pid)
                    reply({"ok": True})
                elif op == "snapshot":
                    reply({"ok": True, "peers": await worker.snapshot(command.get("ids"))})
                elif op == "exit":
                    reply({"ok": True})
                    return
                else:
                    reply({"ok": False, "error": f"unknown op {op}"})
            except Exception as exc:  # reported to the coordinator, which fails the run
                logger.exception("worker: %s failed", op)
                reply({"ok": False, "error": repr(exc)})
    finally:
        await asyncio.wait_for(worker.close(), 60)


# --- coordinator ------------------------------------------------------------


class WorkerProc:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.pid = proc.pid
        self.lock = asyncio.Lock()

    async def call(self, command: dict[str, Any], limit_s: float = 120) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        async with self.lock:
            self.proc.stdin.write((json.dumps(command) + "\n").encode())
            await self.proc.stdin.drain()
            line = await asyncio.wait_for(self.proc.stdout.readline(), limit_s)
        if not line:
            raise RuntimeError(f"worker {self.pid} exited")
        data: dict[str, Any] = json.loads(line)
        if not data.get("ok", True):
            raise RuntimeError(f"worker {self.pid}: {data.get('error')}")
        return data


@dataclass
class Measurement:
    scenario: str
    subscribers: int
    streams: int  # forwarded (track, subscriber) pairs
    window_s: float
    server_cpu_s: float
    generator_cpu_s: float
    packets: int
    video_packets: int
    audio_packets: int
    lost: int
    fps_mean: float
    fps_min: float
    load_before: tuple[float, float, float]
    load_after: tuple[float, float, float]
    receiving: int  # subscribers that got video in the window
    rtx_packets: int = 0  # retransmissions, included in ``packets``
    stalled: list[dict[str, Any]] = field(default_factory=list)  # tracks under 1 fps
    server_packets_out: int | None = None
    # Medians over the late joiners (``n``), and each one under ``samples``.
    late_join: dict[str, Any] = field(default_factory=dict)
    publisher_keyframes_forced: int = 0
    media: str = "av"  # what each publisher sends: "av" (VP8 + Opus) or "video"
    # Joining the subscribers added for this point: server CPU from the first
    # join until all receive, less the previous steady rate over that time.
    setup: dict[str, float] = field(default_factory=dict)
    # HUDDLE_BENCH_RECV_TIMING=1: in-process CPU per incoming datagram (bench.sfu.server).
    receive_timing: dict[str, float] = field(default_factory=dict)

    @property
    def server_core(self) -> float:
        return self.server_cpu_s / self.window_s

    @property
    def generator_core(self) -> float:
        return self.generator_cpu_s / self.window_s

    @property
    def packet_rate(self) -> float:
        return self.packets / self.window_s

    @property
    def us_per_packet(self) -> float | None:
        return self.server_cpu_s / self.packets * 1e6 if self.packets else None

    @property
    def loss(self) -> float:
        total = self.packets + self.lost
        return self.lost / total if total else 0.0


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.server: subprocess.Popen[str] | None = None
        self.server_pid = 0
        self.workers: list[WorkerProc] = []
        self.placement: dict[str, WorkerProc] = {}
        self.port = args.port or free_port()
        self.session: Any = None
        self.janus: Any = None  # bench.sfu.janus.JanusServer in janus mode
        self.janus_dir: Path | None = None

    # processes

    def start_server(self) -> None:
        if self.args.mode == "janus":
            self._start_janus()
            return
        cmd = [
            *self._pin(SERVER_CORE),
            sys.executable,
            "-m",
            "bench.sfu.server",
            "--mode",
            self.args.mode,
            "--port",
            str(self.port),
            *([] if self.args.gso else ["--no-gso"]),
        ]
        self.server = subprocess.Popen(
            cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True, start_new_session=True
        )
        assert self.server.stdout is not None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = self.server.stdout.readline()
            if line.startswith("READY"):
                self.server_pid = int(line.split()[2])
                return
            if not line and self.server.poll() is not None:
                break
        raise RuntimeError("the server did not start")

    def _start_janus(self) -> None:
        import tempfile

        from bench.sfu.janus import JanusServer

        self.janus_dir = Path(tempfile.mkdtemp(prefix="huddle-bench-janus-"))
        self.janus = JanusServer(
            self.janus_dir,
            self.port,
            event_loops=self.args.event_loops or None,
            prefix=self._pin(SERVER_CORE),
        )
        self.server_pid = self.janus.start()
        print(
            f"janus {self.janus.version} pid {self.server_pid} event_loops "
            f"{self.args.event_loops or 'default'} config {self.janus_dir}",
            flush=True,
        )

    def _stop_janus(self) -> None:
        import shutil

        code = self.janus.stop()
        if code not in (0, None) and self.janus_dir is not None:
            print(f"janus exited with {code}; log kept in {self.janus.log_path}", flush=True)
        elif self.janus_dir is not None:
            shutil.rmtree(self.janus_dir, ignore_errors=True)

    async def prepare_call(self, call_id: str) -> None:
        """Janus needs its VideoRoom created first; Huddle creates rooms on join."""
        if self.janus is None:
            return
        import aiohttp

        from bench.sfu.janus import create_room

        if self.session is None:
            self.session = aiohttp.ClientSession()
        await create_room(self.session, self.janus.base_url, call_id)

    def _pin(self, core: int) -> list[str]:
        return ["taskset", "-c", str(core)] if self.args.pin else []

    async def start_workers(self) -> None:
        for _ in range(self.args.procs):
            proc = await asyncio.create_subprocess_exec(
                *self._pin(GENERATOR_CORE),
                sys.executable,
                "-m",
                "bench.sfu.run",
                "--worker",
                "--port",
                str(self.port),
                "--mode",
                self.args.mode,
                *([] if self.args.count_only else ["--full-receivers"]),
                cwd=ROOT,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                limit=64 * 1024 * 1024,
            )
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), 120)
            ready = json.loads(line)
            worker = WorkerProc(proc)
            worker.pid = int(ready["ready"])
            self.workers.append(worker)

    async def stop(self) -> None:
        for worker in self.workers:
            with contextlib.suppress(Exception):
                await worker.call({"op": "exit"}, limit_s=90)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(worker.proc.wait(), 30)
            if worker.proc.returncode is None:
                worker.proc.kill()
        if self.janus is not None:
            self._stop_janus()
        if self.server is not None and self.server.poll() is None:
            self.server.send_signal(signal.SIGTERM)
            try:
                self.server.wait(30)
            except subprocess.TimeoutExpired:
                self.server.kill()

    # peers

    async def join(self, call_id: str, ids: list[str], publish: bool, media: str = "av") -> None:
        groups: dict[int, list[str]] = {}
        for pid in ids:
            index = min(
                range(len(self.workers)),
                key=lambda i: sum(1 for w in self.placement.values() if w is self.workers[i]),
            )
            self.placement[pid] = self.workers[index]
            groups.setdefault(index, []).append(pid)
        await asyncio.gather(
            *(
                self.workers[i].call(
                    {"op": "join", "call": call_id, "ids": g, "publish": publish, "media": media}
                )
                for i, g in groups.items()
            )
        )

    async def leave(self, ids: list[str]) -> None:
        groups: dict[int, list[str]] = {}
        for pid in ids:
            worker = self.placement.pop(pid)
            groups.setdefault(self.workers.index(worker), []).append(pid)
        await asyncio.gather(
            *(self.workers[i].call({"op": "leave", "ids": g}) for i, g in groups.items())
        )

    async def snapshot(self, ids: list[str] | None = None) -> dict[str, Any]:
        replies = await asyncio.gather(
            *(w.call({"op": "snapshot", "ids": ids}) for w in self.workers)
        )
        peers: dict[str, Any] = {}
        for data in replies:
            peers.update(data["peers"])
        return peers

    async def server_stats(self) -> dict[str, Any]:
        import aiohttp

        if self.janus is not None:
            return {}

        if self.session is None:
            self.session = aiohttp.ClientSession()
        async with self.session.get(f"http://127.0.0.1:{self.port}/stats") as response:
            data: dict[str, Any] = await response.json()
            return data

    async def wait_receiving(
        self, ids: list[str], tracks: int, limit_s: float, poll_s: float = 1.0
    ) -> int:
        """Until each of ``ids`` receives video on ``tracks`` tracks; returns how many do."""
        deadline = time.monotonic() + limit_s
        count = 0
        while True:
            snap = await self.snapshot(ids)
            count = sum(
                1
                for pid in ids
                if (v := snap.get(pid, {}).get("kinds", {}).get("video"))
                and v["tracks"] >= tracks
                and all(f > 0 for f in v["per_track_frames"])
            )
            if count == len(ids) or time.monotonic() > deadline:
                return count
            await asyncio.sleep(poll_s)

    # measurement

    async def measure(
        self, scenario: str, subscribers: list[str], streams: int, publisher: str | None
    ) -> Measurement:
        cpu_pids = [w.pid for w in self.workers]
        load_before = loadavg()
        snap0 = await self.snapshot()
        stats0 = await self.server_stats()
        t0 = time.monotonic()
        server0 = cpu_seconds(self.server_pid)
        gen0 = sum(cpu_seconds(p) for p in cpu_pids)
        await asyncio.sleep(self.args.window)
        server1 = cpu_seconds(self.server_pid)
        gen1 = sum(cpu_seconds(p) for p in cpu_pids)
        t1 = time.monotonic()
        stats1 = await self.server_stats()
        snap1 = await self.snapshot()
        load_after = loadavg()
        wall = t1 - t0
        totals: Counter[str] = Counter()
        fps: list[float] = []
        stalled: list[dict[str, Any]] = []
        receiving = 0
        for pid in subscribers:
            a, b = snap0.get(pid), snap1.get(pid)
            if a is None or b is None:
                continue
            for kind in ("audio", "video"):
                ka, kb = a["kinds"][kind], b["kinds"][kind]
                totals[f"{kind}_packets"] += kb["packets"] - ka["packets"]
                totals["lost"] += max(0, kb["lost"] - ka["lost"])
                totals["rtx"] += kb.get("rtx", 0) - ka.get("rtx", 0)
            fa = a["kinds"]["video"]["per_track_frames"]
            fb = b["kinds"]["video"]["per_track_frames"]
            if len(fa) == len(fb):
                rates = [(y - x) / wall for x, y in zip(fa, fb, strict=True)]
                fps.extend(rates)
                receiving += int(bool(rates) and min(rates) > 0)
                if rates and min(rates) < 1:
                    stalled.append({"id": pid, "fps": [round(r, 1) for r in rates]})
        forced = 0
        if publisher is not None and publisher in snap0 and publisher in snap1:
            forced = snap1[publisher]["keyframes_forced"] - snap0[publisher]["keyframes_forced"]
        packets_out = None
        if "packets_out" in stats0:
            packets_out = stats1["packets_out"] - stats0["packets_out"]
        return Measurement(
            scenario=scenario,
            subscribers=len(subscribers),
            streams=streams,
            window_s=wall,
            server_cpu_s=server1 - server0,
            generator_cpu_s=gen1 - gen0,
            packets=totals["audio_packets"] + totals["video_packets"],
            video_packets=totals["video_packets"],
            audio_packets=totals["audio_packets"],
            lost=totals["lost"],
            fps_mean=sum(fps) / len(fps) if fps else 0.0,
            fps_min=min(fps) if fps else 0.0,
            load_before=load_before,
            load_after=load_after,
            receiving=receiving,
            rtx_packets=totals["rtx"],
            stalled=stalled,
            server_packets_out=packets_out,
            publisher_keyframes_forced=forced,
        )

    async def late_join(
        self,
        call_id: str,
        pid: str,
        limit_s: float,
        kinds: tuple[str, ...] = ("audio", "video"),
        steady_core: float | None = None,
    ) -> dict[str, float | None]:
        """One more subscriber: time to its first frame / keyframe of each kind.

        ``server_cpu_ms``: the server's CPU from the join until every kind
        arrived, less ``steady_core`` (the window just measured) over that
        time: what admitting one subscriber cost.
        """
        cpu0, t0 = cpu_seconds_fine(self.server_pid), time.monotonic()
        await self.join(call_id, [pid], publish=False)
        deadline = t0 + limit_s
        result: dict[str, float | None] = {f"{kind}_s": None for kind in kinds}
        while time.monotonic() < deadline:
            snap = (await self.snapshot([pid])).get(pid)
            if snap is not None:
                joined = snap["joined_at"]
                if snap.get("subscribe_connected_at") is not None:
                    # ICE + DTLS of the subscribe connection done
                    result["connected_s"] = snap["subscribe_connected_at"] - joined
                for kind in kinds:
                    first = snap["kinds"][kind]["first_frame_at"]
                    if first is not None:
                        result[f"{kind}_s"] = first - joined
                        result[f"{kind}_after_announce_s"] = snap["kinds"][kind][
                            "announced_to_first"
                        ]
                    key = snap["kinds"][kind].get("first_keyframe_at")
                    if key is not None:
                        result[f"{kind}_keyframe_s"] = key - joined
                if all(result[f"{kind}_s"] is not None for kind in kinds):
                    break
            await asyncio.sleep(0.05)
        cpu1, t1 = cpu_seconds_fine(self.server_pid), time.monotonic()
        if steady_core is not None and all(result[f"{kind}_s"] is not None for kind in kinds):
            result["server_cpu_ms"] = (cpu1 - cpu0 - steady_core * (t1 - t0)) * 1e3
        await self.leave([pid])
        return result

    async def join_measured(
        self,
        call_id: str,
        ids: list[str],
        everyone: list[str],
        steady_core: float,
        limit_s: float,
    ) -> tuple[int, dict[str, float]]:
        """Join ``ids`` as subscribers (batches of 8) until ``everyone`` receives video.

        Returns how many of ``everyone`` receive and the setup cost of
        ``ids``: server CPU over the joins less ``steady_core`` (the rate
        before them) over that time.
        """
        cpu0, t0 = cpu_seconds_fine(self.server_pid), time.monotonic()
        # In batches, so the join storm does not distort the window.
        for start in range(0, len(ids), 8):
            await self.join(call_id, ids[start : start + 8], publish=False)
            await asyncio.sleep(0.5)
        got = await self.wait_receiving(everyone, 1, limit_s, poll_s=0.25)
        return got, self._setup(len(ids), steady_core, cpu0, t0)

    def _setup(self, joined: int, steady_core: float, cpu0: float, t0: float) -> dict[str, float]:
        """Setup cost since (``cpu0``, ``t0``) of ``joined`` participants."""
        cpu1, t1 = cpu_seconds_fine(self.server_pid), time.monotonic()
        extra = cpu1 - cpu0 - steady_core * (t1 - t0)
        return {
            "joined": joined,
            "wall_s": t1 - t0,
            "server_cpu_s": cpu1 - cpu0,
            "steady_core": steady_core,
            "cpu_ms_per_subscriber": extra / joined * 1e3 if joined else 0.0,
        }

    async def steady_core(self, seconds: float) -> float:
        """The server's share of a core over ``seconds`` (a short baseline)."""
        cpu0, t0 = cpu_seconds_fine(self.server_pid), time.monotonic()
        await asyncio.sleep(seconds)
        return (cpu_seconds_fine(self.server_pid) - cpu0) / (time.monotonic() - t0)

    async def profile(self, seconds: float, out: Path) -> None:
        """py-spy the server for ``seconds`` (pinned to the generator's core)."""
        spy = Path(sys.executable).with_name("py-spy")
        cmd = [
            *self._pin(GENERATOR_CORE),
            str(spy),
            "record",
            "--pid",
            str(self.server_pid),
            "--duration",
            str(int(seconds)),
            "--rate",
            "200",
            "--format",
            "raw",
            "--threads",
            "-o",
            str(out),
        ]
        proc = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.DEVNULL)
        await asyncio.wait_for(proc.wait(), seconds + 60)


async def wait_quiet(max_load: float, max_wait: float) -> dict[str, Any]:
    """Wait (bounded) until the 1-minute load average is below ``max_load``."""
    start = time.monotonic()
    first = loadavg()
    for _ in range(int(max_wait // 5)):
        if loadavg()[0] <= max_load:
            break
        await asyncio.sleep(5)
    return {
        "load_at_start": first,
        "load_when_started": loadavg(),
        "waited_s": round(time.monotonic() - start),
        "quiet": loadavg()[0] <= max_load,
    }


def fit(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Least-squares line y = a + b x."""
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    b = sum((x - mx) * (y - my) for x, y in points) / sxx if sxx else 0.0
    return my - b * mx, b


async def coordinate(args: argparse.Namespace) -> dict[str, Any]:
    from bench.sfu.clips import audio_clip, video_clip

    if args.pin:
        os.sched_setaffinity(0, {GENERATOR_CORE})
    video = video_clip()  # fills the cache before the workers start
    audio = audio_clip()
    conditions = await wait_quiet(args.max_load, args.quiet_wait)
    print(f"conditions: {conditions}", flush=True)
    bench = Bench(args)
    results: list[Measurement] = []
    profile: dict[str, Any] | None = None
    try:
        bench.start_server()
        await bench.start_workers()
        idle_core = await bench.steady_core(3.0)  # no participant yet
        for scenario, media, spec in (
            ("fanout", "video", args.subscribers),
            ("fanout_av", "av", args.av_subscribers),
        ):
            counts = sorted({int(n) for n in spec.split(",") if n.strip()})
            if counts:
                results += await run_fanout(bench, scenario, media, counts)
        for size in sorted({int(n) for n in args.room.split(",") if n.strip()} - {0}):
            results.append(await run_room(bench, size))
        if args.publishers > 0:
            results.append(await run_publishers(bench, args.publishers, idle_core))
        if args.profile:
            profile = {
                "file": args.profile,
                "subscribers": max(int(n) for n in args.subscribers.split(",") if n.strip()),
            }
    finally:
        if bench.session is not None:
            await bench.session.close()
        await bench.stop()
    return {
        "mode": args.mode,
        "server": bench_server_info(bench),
        "conditions": conditions,
        "clip": {
            "video_mbps": round(video.bitrate / 1e6, 3),
            "video_frames": len(video.frames),
            "audio_kbps": round(audio.bitrate / 1e3, 1),
        },
        "window_s": args.window,
        "idle_core": idle_core,
        "measurements": [
            {
                **asdict(m),
                "server_core": m.server_core,
                "generator_core": m.generator_core,
                "packet_rate": m.packet_rate,
                "us_per_packet": m.us_per_packet,
                "loss": m.loss,
            }
            for m in results
        ],
        "derived": derive(results, idle_core),
        "profile": profile,
    }


def bench_server_info(bench: Bench) -> dict[str, Any]:
    info: dict[str, Any] = {"mode": bench.args.mode, "netns": bool(os.environ.get(NETNS_ENV))}
    if bench.janus is not None:
        info["janus_version"] = bench.janus.version
        info["event_loops"] = bench.args.event_loops or "default"
    return info


async def run_fanout(
    bench: Bench, scenario: str, media: str, counts: list[int]
) -> list[Measurement]:
    """1 publisher (``media``) → each of ``counts`` subscribers in turn."""
    args = bench.args
    call = scenario
    kinds = ("video",) if media == "video" else ("audio", "video")
    results: list[Measurement] = []
    await bench.prepare_call(call)
    await bench.join(call, ["pub"], publish=True, media=media)
    await asyncio.sleep(2)
    steady = await bench.steady_core(3.0)  # the publisher alone
    subs: list[str] = []
    for n in counts:
        new = [f"sub{i}" for i in range(len(subs), n)]
        got, setup = await bench.join_measured(call, new, [*subs, *new], steady, args.join_timeout)
        subs += new
        await asyncio.sleep(args.warmup)
        m = await bench.measure(scenario, subs, len(kinds) * n, "pub")
        m.media = media
        m.receiving = min(m.receiving, got) if subs else 0
        if new:
            m.setup = setup
        if args.profile and n == counts[-1] and scenario == "fanout":
            out = Path(args.profile)
            await bench.profile(args.window, out)
        if n > 0:
            m.late_join = await late_joins(bench, call, f"late{n}", kinds, m.server_core)
        steady = m.server_core
        results.append(m)
        print(summary_line(m), flush=True)
    await bench.leave(["pub", *subs])
    await asyncio.sleep(3)
    return results


async def late_joins(
    bench: Bench, call: str, prefix: str, kinds: tuple[str, ...], steady_core: float
) -> dict[str, Any]:
    """``--late-joins`` late joiners one after another: medians, and every sample.

    They are 1 s apart: the publisher answers keyframe requests at most every
    300 ms (like Chrome) and servers rate-limit PLIs, so a joiner right after
    another would measure that throttle rather than the join.
    """
    samples = []
    for i in range(max(1, bench.args.late_joins)):
        if i:
            await asyncio.sleep(LATE_JOIN_SPACING)
        samples.append(
            await bench.late_join(
                call, f"{prefix}-{i}", bench.args.join_timeout, kinds, steady_core=steady_core
            )
        )
    out: dict[str, Any] = {}
    for key in samples[0]:
        values = [v for sample in samples if (v := sample.get(key)) is not None]
        out[key] = statistics.median(values) if len(values) == len(samples) else None
    out["n"] = len(samples)
    out["samples"] = samples
    return out


async def run_room(bench: Bench, size: int) -> Measurement:
    """``size`` members, each publishing VP8 + Opus and receiving all the others."""
    args = bench.args
    call = f"room{size}"
    await bench.prepare_call(call)
    members = [f"member{i}" for i in range(size)]
    steady = await bench.steady_core(2.0)
    cpu0, t0 = cpu_seconds_fine(bench.server_pid), time.monotonic()
    # One at a time, so every member's first subscribe offer already
    # carries all earlier members (see RESULTS.md: aiortc #1414 once
    # left a receiver unstarted here).
    for i, member in enumerate(members):
        await bench.join(call, [member], publish=True, media="av")
        await bench.wait_receiving(members[: i + 1], i, args.join_timeout, poll_s=0.25)
    got = await bench.wait_receiving(members, size - 1, args.join_timeout, poll_s=0.25)
    setup = bench._setup(size, steady, cpu0, t0)
    await asyncio.sleep(args.warmup)
    m = await bench.measure("room", members, 2 * size * (size - 1), None)
    m.receiving = min(m.receiving, got)
    m.setup = setup
    m.late_join = await late_joins(
        bench, call, f"late-room{size}", ("audio", "video"), m.server_core
    )
    print(summary_line(m), flush=True)
    await bench.leave(members)
    await asyncio.sleep(3)
    return m


async def run_publishers(bench: Bench, count: int, idle_core: float) -> Measurement:
    """``count`` video publishers, each alone in its own call: the receive path."""
    args = bench.args
    ids = [f"alone{i}" for i in range(count)]
    for i, pid in enumerate(ids):
        await bench.prepare_call(f"alone{i}")
        await bench.join(f"alone{i}", [pid], publish=True, media="video")
    await asyncio.sleep(2 + args.warmup)
    before = (await bench.server_stats()).get("receive_timing", {})
    m = await bench.measure("publishers", [], 0, None)
    after = (await bench.server_stats()).get("receive_timing", {})
    datagrams = after.get("datagrams", 0) - before.get("datagrams", 0)
    if datagrams > 0:
        cpu_ns = after["cpu_ns"] - before["cpu_ns"]
        m.receive_timing = {"datagrams": datagrams, "us_per_datagram": cpu_ns / datagrams / 1e3}
    m.subscribers = 0
    m.streams = count
    m.media = "video"
    timing = m.receive_timing.get("us_per_datagram")
    in_process = f", in-process {timing:.1f} µs/datagram" if timing is not None else ""
    print(
        f"publishers K={count}: server {m.server_core:.1%} (idle {idle_core:.2%}){in_process}",
        flush=True,
    )
    await bench.leave(ids)
    await asyncio.sleep(3)
    return m


def derive(results: list[Measurement], idle_core: float | None = None) -> dict[str, Any]:
    """Per fan-out series: marginal µs per forwarded packet, fit, fixed and setup cost.

    The video-only series (``fanout``) is reported at the top level as
    before; ``fanout_av`` under its own key.
    """
    out: dict[str, Any] = {}
    for scenario in ("fanout", "fanout_av"):
        series = derive_series([m for m in results if m.scenario == scenario], idle_core)
        if scenario == "fanout":
            out.update(series)
        elif series:
            out[scenario] = series
    one = next((m for m in results if m.scenario == "fanout" and m.subscribers == 1), None)
    alone = next((m for m in results if m.scenario == "publishers"), None)
    if alone is not None and one is not None and idle_core is not None and one.packet_rate:
        incoming = alone.streams * one.packet_rate
        out["receive_us_per_incoming_packet"] = (alone.server_core - idle_core) / incoming * 1e6
        out["receive_publishers"] = alone.streams
    if alone is not None and alone.receive_timing:
        out["receive_in_process_us_per_datagram"] = alone.receive_timing["us_per_datagram"]
    return out


def derive_series(points: list[Measurement], idle_core: float | None) -> dict[str, Any]:
    fan = [m for m in points if m.subscribers > 0]
    out: dict[str, Any] = {}
    if not points:
        return out
    one = next((m for m in fan if m.subscribers == 1), None)
    if one is not None:
        out["fixed_core_1_to_1"] = one.server_core
    setups = [m.setup["cpu_ms_per_subscriber"] for m in fan if m.setup.get("joined")]
    if setups:
        joined = sum(m.setup["joined"] for m in fan if m.setup.get("joined"))
        total = sum(
            m.setup["cpu_ms_per_subscriber"] * m.setup["joined"]
            for m in fan
            if m.setup.get("joined")
        )
        out["setup_cpu_ms_per_subscriber"] = total / joined
    late = {
        m.subscribers: m.late_join.get("video_keyframe_s") or m.late_join.get("video_s")
        for m in fan
    }
    out["late_join_first_keyframe_s"] = late
    if len(fan) >= 2:
        lo, hi = fan[0], fan[-1]
        dpk = hi.packet_rate - lo.packet_rate
        out["marginal_us_per_packet"] = (
            (hi.server_core - lo.server_core) / dpk * 1e6 if dpk > 0 else None
        )
        out["marginal_between"] = [lo.subscribers, hi.subscribers]
        steps = []
        for a, b in itertools.pairwise(fan):
            d = b.packet_rate - a.packet_rate
            steps.append(
                {
                    "from": a.subscribers,
                    "to": b.subscribers,
                    "us_per_packet": (b.server_core - a.server_core) / d * 1e6 if d > 0 else None,
                }
            )
        out["steps"] = steps
        intercept, slope = fit([(m.subscribers, m.server_core) for m in fan])
        out["fit_core_fixed"] = intercept
        out["fit_core_per_subscriber"] = slope
        if slope > 0:
            per_core = (1 - intercept) / slope
            out["subscribers_per_core"] = per_core
            out["streams_per_core"] = fan[-1].streams / fan[-1].subscribers * per_core
    return out


def summary_line(m: Measurement) -> str:
    us = f"{m.us_per_packet:.1f}" if m.us_per_packet else "-"
    key = m.late_join.get("video_keyframe_s") or m.late_join.get("video_s")
    late = f"{key * 1e3:.0f} ms" if key is not None else "-"
    per = m.setup.get("cpu_ms_per_subscriber")
    setup = f"{per:.1f} ms/sub" if per is not None else "-"
    return (
        f"{m.scenario} N={m.subscribers}: server {m.server_core * 100:.1f}% "
        f"gen {m.generator_core * 100:.1f}% pkts/s {m.packet_rate:.0f} µs/pkt {us} "
        f"fps {m.fps_mean:.1f}/{m.fps_min:.1f} loss {m.loss * 100:.2f}% "
        f"recv {m.receiving}/{m.subscribers} late {late} setup {setup} "
        f"load {m.load_before[0]:.2f}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mode", choices=("huddle", "naive", "janus"), default="huddle")
    parser.add_argument(
        "--subscribers",
        default="0,1,8,32,64",
        help="fan-out with video only: comma-separated subscriber counts ('' to skip)",
    )
    parser.add_argument(
        "--av-subscribers",
        default="1,8,32,64",
        help="fan-out with video + Opus: comma-separated subscriber counts ('' to skip)",
    )
    parser.add_argument(
        "--room",
        "--rooms",
        dest="room",
        default="6,10",
        help="sizes of rooms where everyone publishes A+V (comma-separated; 0 to skip)",
    )
    parser.add_argument(
        "--publishers",
        type=int,
        default=0,
        help="the receive path: this many video publishers alone in their calls "
        "(needs 1 in --subscribers for the packet rate; 0 to skip)",
    )
    parser.add_argument(
        "--event-loops",
        type=int,
        default=0,
        help="janus mode: Janus's event_loops (0: its default, one thread per handle)",
    )
    parser.add_argument(
        "--netns",
        action="store_true",
        help="run in a private network namespace (always so in janus mode; needs root)",
    )
    parser.add_argument(
        "--late-joins", type=int, default=3, help="late joiners after each window (medians)"
    )
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--window", type=float, default=15.0)
    parser.add_argument("--procs", type=int, default=2, help="load-generator processes")
    parser.add_argument("--join-timeout", type=float, default=60.0)
    parser.add_argument("--max-load", type=float, default=1.0, help="wait for this 1-min load")
    parser.add_argument("--quiet-wait", type=float, default=300.0, help="at most this long")
    parser.add_argument("--no-pin", dest="pin", action="store_false")
    parser.add_argument(
        "--no-gso", dest="gso", action="store_false", help="server sends one datagram per packet"
    )
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--profile", help="py-spy raw output of the server at the largest N")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--full-receivers",
        dest="count_only",
        action="store_false",
        help="subscribers use aiortc's whole receive path (NACK, PLI, reassembly) "
        "instead of header-only counting; costs the generator ~3x more per packet",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    import uvloop

    if args.worker:
        host = NETNS_HOST if args.mode == "janus" else "127.0.0.1"
        uvloop.run(
            worker_main(args.port, count_only=args.count_only, mode=args.mode, ice_host=host)
        )
        return 0
    if args.pin and (os.cpu_count() or 1) < 2:
        parser.error("needs 2 cores (or --no-pin)")
    if args.mode == "janus" and args.profile:
        parser.error("--profile samples a Python server with py-spy; not for --mode janus")
    if (args.mode == "janus" or args.netns) and not in_netns():
        if os.geteuid() != 0:
            parser.error("--mode janus and --netns run in a new network namespace: needs root")
        # Janus offers no loopback candidate outside it (bench/sfu/janus.py).
        argv = [sys.executable, "-m", "bench.sfu.run", *(sys.argv[1:] if argv is None else argv)]
        env = {**os.environ, NETNS_ENV: "1", "PYTHONPATH": str(ROOT)}
        os.execvpe("unshare", netns_command(argv), env)
    result = uvloop.run(coordinate(args))
    text = json.dumps(result, indent=2, default=str)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(text + "\n")
    print(json.dumps(result["derived"], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
