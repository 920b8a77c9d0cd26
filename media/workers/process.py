"""A media worker process: one :class:`~media.sfu.Sfu` behind the front's socket.

Started by the front (:mod:`media.workers.link`) as
``python -m media.workers.process <socket fd> <front pid>`` with its
:class:`~media.workers.protocol.WorkerSpec` pickled on stdin. It serves the
frames of :mod:`media.workers.protocol` until the front says ``close`` or goes
away: EOF on the socket, or the front's death (``PR_SET_PDEATHSIG``: the kernel
kills the worker even when the front was SIGKILLed). SIGINT and SIGTERM are
ignored: the front alone decides when its workers stop (a terminal's Ctrl-C or
systemd's SIGTERM reach the whole group, and a draining front keeps its rooms).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import pickle
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest

from media.errors import MediaError
from media.metrics import PrometheusMediaMetrics
from media.seam import Message, ParticipantLeft, RoomEnded
from media.sfu import Sfu

from .channel import Channel, ChannelClosed
from .protocol import LOAD_INTERVAL_S, Frame, WorkerSpec, error_frame

logger = logging.getLogger("media.workers.process")  # also when run as __main__

_PR_SET_PDEATHSIG = 1


class FrontPort:
    """The worker's :class:`~media.seam.SignalingPort`: frames to the front."""

    def __init__(self, channel: Channel) -> None:
        self._channel = channel

    async def _send(self, frame: Frame) -> None:
        with contextlib.suppress(ChannelClosed):  # the front is gone: the worker ends
            await self._channel.send(frame)

    async def send_to(self, call_id: str, participant_id: str, message: Message) -> None:
        await self._send(
            {
                "kind": "send_to",
                "call_id": call_id,
                "participant_id": participant_id,
                "message": message,
            }
        )

    async def send_error(self, call_id: str, participant_id: str, error: MediaError) -> None:
        await self._send(
            {
                "kind": "send_error",
                "call_id": call_id,
                "participant_id": participant_id,
                **error_frame(error),
            }
        )

    async def announce(self, call_id: str, state: Message) -> None:
        """A room's span state, for the front to send to the call's other nodes."""
        await self._send({"kind": "announce", "call_id": call_id, "state": state})


class WorkerServer:
    """Runs the front's requests on the SFU: those of one participant (or one
    room's end) in the order they came, different participants' concurrently,
    as the in-process SFU sees them from separate sockets."""

    def __init__(self, spec: WorkerSpec, channel: Channel) -> None:
        self._spec = spec
        self._channel = channel
        self._registry = CollectorRegistry()
        self._metrics = PrometheusMediaMetrics(self._registry)
        # Named apart from the front's own process_* (one family per name on /metrics).
        ProcessCollector(namespace="huddle_worker", registry=self._registry)
        port = FrontPort(channel)
        self.sfu = Sfu(
            spec.media,
            port,
            self._metrics,
            relay=spec.relay,
            span=port if spec.relay is not None else None,
            node_id=spec.node_id,
        )
        self._last: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._reported: dict[str, list[str]] = {}

    async def run(self) -> None:
        """Serve until ``close`` or EOF, then close every room."""
        await self.sfu.start()  # its relay socket, if rooms may span nodes
        reporter = asyncio.create_task(self._report(), name="worker load")
        try:
            async for frame in self._channel.frames():
                if frame["kind"] == "close":
                    return  # the rooms close below
                self._dispatch(frame)
        finally:
            reporter.cancel()
            tasks = [reporter, *self._tasks]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.sfu.close()
            await self._channel.close()

    def _dispatch(self, frame: Frame) -> None:
        kind, request_id = frame["kind"], frame.get("id")
        call_id, pid = frame.get("call_id"), frame.get("participant_id", "")
        work: Callable[[], Awaitable[None]]
        if not isinstance(call_id, str) or not isinstance(pid, str):
            self._refuse(request_id, f"a {kind} frame without ids")
            return
        if kind == "signal" and isinstance(frame.get("message"), dict):
            message: Message = frame["message"]

            def work() -> Awaitable[None]:
                return self.sfu.handle_signal(call_id, pid, message)
        elif kind == "left":

            def work() -> Awaitable[None]:
                return self.sfu.on_event(ParticipantLeft(call_id, pid))
        elif kind == "ended":

            def work() -> Awaitable[None]:
                return self.sfu.on_event(RoomEnded(call_id))
        elif kind == "span" and isinstance(frame.get("state"), dict):
            state: Message = frame["state"]

            def work() -> Awaitable[None]:
                return self.sfu.on_span(call_id, state)
        else:
            self._refuse(request_id, f"unknown or malformed frame {kind!r}")
            return
        key = (call_id, pid)
        task = asyncio.create_task(self._serve(self._last.get(key), request_id, work))
        self._last[key] = task
        self._tasks.add(task)

        def done(finished: asyncio.Task[None]) -> None:
            self._tasks.discard(finished)
            if self._last.get(key) is finished:
                del self._last[key]

        task.add_done_callback(done)

    def _refuse(self, request_id: object, why: str) -> None:
        """A frame this worker cannot serve: logged, and answered if it was a request
        (the front would wait for its ``done`` otherwise)."""
        logger.warning("worker %d: %s", self._spec.index, why)
        if request_id is None:
            return

        async def answer() -> None:
            with contextlib.suppress(ChannelClosed):
                await self._channel.send(
                    {
                        "kind": "done",
                        "id": request_id,
                        "error": {"code": "sfu_error", "message": why},
                    }
                )

        task = asyncio.create_task(answer())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(
        self,
        previous: asyncio.Task[None] | None,
        request_id: object,
        work: Callable[[], Awaitable[None]],
    ) -> None:
        if previous is not None:
            await asyncio.wait([previous])  # its order, not its outcome
        answer: Frame = {"kind": "done", "id": request_id}
        try:
            await work()
        except MediaError as exc:
            answer["error"] = error_frame(exc)
        except Exception:
            logger.exception("worker %d: request failed", self._spec.index)
            answer["error"] = {"code": "sfu_error", "message": "internal error in a media worker"}
        with contextlib.suppress(ChannelClosed):
            await self._rooms_if_changed()  # first: the front sees the rooms it asked for
            await self._channel.send(answer)

    def _rooms(self) -> dict[str, list[str]]:
        rooms = {call_id: sorted(pids) for call_id, pids in self.sfu.members().items()}
        self._reported = rooms
        return rooms

    async def _rooms_if_changed(self) -> None:
        """A request changed who is in which room: tell the front at once (it routes
        and drains by it), not only at the next ``load``."""
        rooms = {call_id: sorted(pids) for call_id, pids in self.sfu.members().items()}
        if rooms != self._reported:
            self._reported = rooms
            await self._channel.send({"kind": "rooms", "rooms": rooms})

    async def _report(self) -> None:
        while True:
            frame: Frame = {
                "kind": "load",
                "rooms": self._rooms(),
                "packets": self._metrics.forwarded_packets(),
                "cpu_s": time.process_time(),
                "metrics": generate_latest(self._registry).decode(),
            }
            try:
                await self._channel.send(frame)
            except ChannelClosed:
                return
            await asyncio.sleep(LOAD_INTERVAL_S)


def _die_with_parent(parent: int) -> None:
    """Linux: be killed when the front dies, however it dies."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # it died before prctl
        sys.exit(0)


async def serve(spec: WorkerSpec, sock: socket.socket) -> None:
    channel = await Channel.over(sock)
    server = WorkerServer(spec, channel)
    logger.info("media worker %d ready (pid %d)", spec.index, os.getpid())
    await server.run()
    logger.info("media worker %d stopped", spec.index)


def main(argv: list[str]) -> int:
    fd, parent = int(argv[1]), int(argv[2])
    _die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    spec: WorkerSpec = pickle.loads(sys.stdin.buffer.read())  # from the front, its parent
    logging.basicConfig(
        level=spec.log_level,
        format=f"%(asctime)s %(levelname)s worker{spec.index} %(name)s: %(message)s",
    )
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        pass
    asyncio.run(serve(spec, socket.socket(fileno=fd)))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv))
