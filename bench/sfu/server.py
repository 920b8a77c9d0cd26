"""The server side of the forwarding benchmark: Huddle's SFU or a naive relay.

One process, meant to run pinned to one core (``taskset -c 0``), hosting
either

* ``--mode huddle``: :class:`media.sfu.Sfu`, exactly as ``huddle serve`` wires
  it (uvloop, ``MediaConfig`` with loopback ICE), minus the HTTP API and the
  database, which do nothing while media flows; or
* ``--mode naive``: the textbook aiortc relay, i.e. normal ``RTCPeerConnection``
  receivers (which decode) and ``addTrack(MediaRelay().subscribe(track))`` on
  every subscriber connection (which re-encodes), speaking the same
  publish/subscribe protocol so the load generator drives both identically.

Signaling is one WebSocket per participant at ``/ws/{call_id}/{participant_id}``
carrying the SFU messages of ``docs/protocol.md`` (``target_id == "sfu"``
traffic) as JSON; closing it removes the participant. Loopback only, no STUN.

    taskset -c 0 python -m bench.sfu.server --mode huddle --port 8790
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from typing import Any

from aiohttp import WSMsgType, web
from aiortc import (
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc.contrib.media import MediaRelay
from aiortc.mediastreams import MediaStreamTrack

from media.aiortc_compat import restrict_host_addresses
from media.config import MediaConfig
from media.errors import MediaError
from media.metrics import NoopMediaMetrics
from media.sfu import Sfu
from media.signals import PUBLISH, SFU_ID, SUBSCRIBE, Message

logger = logging.getLogger("bench.sfu.server")

NEGOTIATION_TIMEOUT = 30.0


class WsHub:
    """Server → client delivery: one WebSocket per (call, participant)."""

    def __init__(self) -> None:
        self.sockets: dict[tuple[str, str], web.WebSocketResponse] = {}

    async def send_to(self, call_id: str, participant_id: str, message: Message) -> None:
        ws = self.sockets.get((call_id, participant_id))
        if ws is not None and not ws.closed:
            await ws.send_json({**message, "sender_id": SFU_ID})

    async def send_error(self, call_id: str, participant_id: str, error: MediaError) -> None:
        message = {"type": "error", "code": error.code, "message": str(error) or error.code}
        await self.send_to(call_id, participant_id, message)


class NaivePeer:
    """One participant of the naive relay: decode on publish, encode per subscriber."""

    def __init__(self, relay: NaiveRelay, call_id: str, participant_id: str) -> None:
        self.relay = relay
        self.call_id = call_id
        self.id = participant_id
        config = RTCConfiguration(iceServers=[])
        self.publish_pc = RTCPeerConnection(config)
        self.subscribe_pc = RTCPeerConnection(config)
        self.tracks: list[MediaStreamTrack] = []
        self.publish_pc.on("track", self.tracks.append)
        self._subscribed: set[str] = set()
        self._owners: dict[int, tuple[str, str]] = {}  # id(sender) -> (publisher, kind)
        self._dirty = asyncio.Event()
        self._answer: asyncio.Future[RTCSessionDescription] | None = None
        self._task = asyncio.get_running_loop().create_task(self._negotiate_loop())

    def refresh(self) -> None:
        self._dirty.set()

    async def handle_publish_offer(self, message: Message) -> None:
        pc = self.publish_pc
        await pc.setRemoteDescription(RTCSessionDescription(sdp=message["sdp"], type="offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        await self.relay.hub.send_to(
            self.call_id,
            self.id,
            {"type": "answer", "pc": PUBLISH, "sdp": pc.localDescription.sdp},
        )

    def handle_subscribe_answer(self, message: Message) -> None:
        if self._answer is not None and not self._answer.done():
            self._answer.set_result(RTCSessionDescription(sdp=message["sdp"], type="answer"))

    async def _negotiate_loop(self) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            while True:
                await self._dirty.wait()
                self._dirty.clear()
                try:
                    await self._negotiate_once()
                except asyncio.CancelledError:
                    raise
                except Exception:
                    logger.exception("naive %s: negotiation failed", self.id)

    async def _negotiate_once(self) -> None:
        pc = self.subscribe_pc
        added = False
        for other in list(self.relay.rooms.get(self.call_id, {}).values()):
            if other is self:
                continue
            for track in list(other.tracks):
                if track.id in self._subscribed or track.readyState != "live":
                    continue
                self._subscribed.add(track.id)
                # buffered=False: the encoder takes the latest decoded frame
                # (dropping raw frames is harmless; the relay's best case).
                sender = pc.addTrack(self.relay.media_relay.subscribe(track, buffered=False))
                self._owners[id(sender)] = (other.id, str(track.kind))
                added = True
        if not added:
            return
        await pc.setLocalDescription(await pc.createOffer())
        tracks = []
        for transceiver in pc.getTransceivers():
            owner = self._owners.get(id(transceiver.sender))
            if owner is not None:
                tracks.append(
                    {
                        "participant_id": owner[0],
                        "stream_id": owner[0],
                        "kind": owner[1],
                        "mid": transceiver.mid,
                    }
                )
        self._answer = asyncio.get_running_loop().create_future()
        await self.relay.hub.send_to(self.call_id, self.id, {"type": "tracks", "tracks": tracks})
        await self.relay.hub.send_to(
            self.call_id,
            self.id,
            {"type": "offer", "pc": SUBSCRIBE, "sdp": pc.localDescription.sdp},
        )
        answer = await asyncio.wait_for(self._answer, NEGOTIATION_TIMEOUT)
        self._answer = None
        await pc.setRemoteDescription(answer)

    async def close(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        await self.publish_pc.close()
        await self.subscribe_pc.close()


class NaiveRelay:
    """Rooms of :class:`NaivePeer`; everyone receives everyone else's tracks."""

    def __init__(self, hub: WsHub) -> None:
        self.hub = hub
        self.media_relay = MediaRelay()
        self.rooms: dict[str, dict[str, NaivePeer]] = {}

    async def handle_signal(self, call_id: str, participant_id: str, message: Message) -> None:
        room = self.rooms.setdefault(call_id, {})
        peer = room.get(participant_id)
        if peer is None:
            peer = room[participant_id] = NaivePeer(self, call_id, participant_id)
        kind, pc = message.get("type"), message.get("pc")
        if kind == "offer" and pc == PUBLISH:
            await peer.handle_publish_offer(message)
            for other in room.values():
                other.refresh()
        elif kind == "answer" and pc == SUBSCRIBE:
            peer.handle_subscribe_answer(message)

    async def remove_participant(self, call_id: str, participant_id: str) -> None:
        peer = self.rooms.get(call_id, {}).pop(participant_id, None)
        if peer is not None:
            await peer.close()

    async def close(self) -> None:
        for room in self.rooms.values():
            for peer in list(room.values()):
                await peer.close()
        self.rooms.clear()


class OfferCounter(NoopMediaMetrics):
    """Counts subscribe offers only (nothing on the packet path)."""

    def __init__(self) -> None:
        self.subscribe_offers = 0

    def subscribe_offer_sent(self) -> None:
        self.subscribe_offers += 1


class HuddleBackend:
    """Huddle's :class:`Sfu` behind the benchmark's WebSocket signaling."""

    def __init__(self, hub: WsHub, *, udp_gso: bool = True) -> None:
        config = MediaConfig(
            ice_hosts=("127.0.0.1",), ice_servers=(), max_participants=500, udp_gso=udp_gso
        )
        self.metrics = OfferCounter()
        self.sfu = Sfu(config, hub, self.metrics)

    async def handle_signal(self, call_id: str, participant_id: str, message: Message) -> None:
        await self.sfu.handle_signal(call_id, participant_id, message)

    async def remove_participant(self, call_id: str, participant_id: str) -> None:
        await self.sfu.remove_participant(call_id, participant_id)

    async def close(self) -> None:
        await self.sfu.close()

    def stats(self) -> dict[str, Any]:
        packets_out = 0
        subscribers = 0
        for room in self.sfu.rooms.values():
            for participant in room.participants.values():
                for down in participant.down_tracks():
                    packets_out += down.packets_out
                    subscribers += 1
        offers = self.metrics.subscribe_offers
        return {"down_tracks": subscribers, "packets_out": packets_out, "offers_sent": offers}


async def tasks_handler(request: web.Request) -> web.Response:
    """Live asyncio tasks by coroutine: what runs in the background during a window."""
    counts: dict[str, int] = {}
    for task in asyncio.all_tasks():
        coro = task.get_coro()
        name = getattr(coro, "__qualname__", type(coro).__name__)
        counts[name] = counts.get(name, 0) + 1
    return web.json_response(dict(sorted(counts.items(), key=lambda kv: -kv[1])))


#: CPU time spent handling incoming SRTP datagrams (HUDDLE_BENCH_RECV_TIMING=1).
RECEIVE_TIMING = {"datagrams": 0, "cpu_ns": 0}


def time_the_receive_path() -> None:
    """Count the thread CPU time of each incoming datagram's handling in-process.

    Wraps what each ICE socket's protocol calls for a datagram once the SFU
    took the connection over (:func:`media.aiortc_compat.intercept_srtp`: the
    C receive path's hook, or :meth:`media.inbound.PublisherInbound._on_srtp`
    on the Python path): unprotect, parse, demultiplex, loss tracking,
    transport-cc, the up track and the fan-out call, plus the few STUN and
    DTLS datagrams the hook passes on. The two clock reads (a syscall each
    for the thread CPU clock) are included. Kernel receive and the event
    loop's dispatch are not: the publishers-alone scenario's server CPU holds
    those.
    """
    from media import aiortc_compat

    original = aiortc_compat._intercept_protocol
    clock = time.thread_time_ns

    def intercept(protocol: Any, *args: Any) -> None:
        original(protocol, *args)
        hook = protocol.datagram_received

        def timed(data: bytes, addr: Any) -> None:
            started = clock()
            hook(data, addr)
            RECEIVE_TIMING["cpu_ns"] += clock() - started
            RECEIVE_TIMING["datagrams"] += 1

        protocol.datagram_received = timed

    aiortc_compat._intercept_protocol = intercept  # type: ignore[assignment]


def make_app(mode: str, *, udp_gso: bool = True) -> web.Application:
    hub = WsHub()
    backend: HuddleBackend | NaiveRelay
    if mode == "huddle":
        backend = HuddleBackend(hub, udp_gso=udp_gso)
    else:
        restrict_host_addresses(["127.0.0.1"])
        RTCRtpSender.getCapabilities("video")  # import the codecs before measuring
        backend = NaiveRelay(hub)

    async def ws_handler(request: web.Request) -> web.WebSocketResponse:
        call_id = request.match_info["call_id"]
        participant_id = request.match_info["participant_id"]
        ws = web.WebSocketResponse(heartbeat=None, max_msg_size=4 * 1024 * 1024)
        await ws.prepare(request)
        hub.sockets[(call_id, participant_id)] = ws
        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    break
                message = msg.json()
                try:
                    await backend.handle_signal(call_id, participant_id, message)
                except MediaError as exc:
                    await ws.send_json({"type": "error", "code": exc.code, "message": str(exc)})
        finally:
            if hub.sockets.get((call_id, participant_id)) is ws:
                del hub.sockets[(call_id, participant_id)]
            await backend.remove_participant(call_id, participant_id)
        return ws

    async def stats_handler(request: web.Request) -> web.Response:
        data: dict[str, Any] = {"mode": mode, "pid": os.getpid()}
        if isinstance(backend, HuddleBackend):
            data.update(backend.stats())
            data["receive_timing"] = dict(RECEIVE_TIMING)
        return web.json_response(data)

    async def cleanup(app: web.Application) -> None:
        await backend.close()

    app = web.Application()
    app.router.add_get("/ws/{call_id}/{participant_id}", ws_handler)
    app.router.add_get("/stats", stats_handler)
    app.router.add_get("/tasks", tasks_handler)
    app.on_cleanup.append(cleanup)
    return app


async def serve(mode: str, port: int, *, udp_gso: bool = True) -> None:
    runner = web.AppRunner(make_app(mode, udp_gso=udp_gso), handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    print(f"READY {port} {os.getpid()}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await asyncio.wait_for(runner.cleanup(), 30)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mode", choices=("huddle", "naive"), required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--no-uvloop", action="store_true", help="use asyncio's own loop")
    parser.add_argument(
        "--no-gso",
        dest="gso",
        action="store_false",
        help="one sendto per packet (HUDDLE_UDP_GSO=0)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    if os.environ.get("HUDDLE_BENCH_RECV_TIMING") == "1":
        time_the_receive_path()
    if not args.no_uvloop:
        import uvloop  # huddle serve runs on uvloop too

        uvloop.install()
    profile_to = os.environ.get("HUDDLE_BENCH_CPROFILE")
    if not profile_to:
        asyncio.run(serve(args.mode, args.port, udp_gso=args.gso))
        return 0
    # Deterministic per-function profile of the whole run (its overhead
    # inflates Python time; read it for where the time goes, not how much).
    import cProfile

    # HUDDLE_BENCH_CPROFILE_CPU=1: time functions by process CPU time rather
    # than wall time (on a busy machine, preemption inflates wall time).
    timer = time.process_time if os.environ.get("HUDDLE_BENCH_CPROFILE_CPU") else time.perf_counter
    with cProfile.Profile(timer) as profile:
        asyncio.run(serve(args.mode, args.port, udp_gso=args.gso))
    profile.dump_stats(profile_to)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
