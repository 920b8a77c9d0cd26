"""The front's end of one media worker: its process, its socket, its requests and
the load it last reported."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import pickle
import socket
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from media.errors import MediaError
from media.seam import Message

from .channel import Channel, ChannelClosed
from .protocol import Frame, WorkerError, WorkerSpec, error_from

logger = logging.getLogger(__name__)

#: What the link hands on to the pool: ``send_to`` and ``send_error`` frames.
Deliver = Callable[[str, str, Message | MediaError], Awaitable[None]]
#: And ``announce`` frames: a room's span state (rooms across nodes).
Announce = Callable[[str, Message], Awaitable[None]]


class WorkerLink:
    """One running worker. Construct with :meth:`spawn`; :meth:`finished` returns
    when its socket closed and its process exited, whichever way."""

    def __init__(
        self,
        index: int,
        process: asyncio.subprocess.Process,
        channel: Channel,
        deliver: Deliver,
        announce: Announce | None = None,
    ) -> None:
        self.index = index
        self.process = process
        self._channel = channel
        self._deliver = deliver
        self._announce = announce
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[WorkerError | None]] = {}
        #: The first ``load`` arrived: the worker's SFU is up.
        self.ready = asyncio.Event()
        self.rooms: dict[str, frozenset[str]] = {}
        self.packets = 0
        self.cpu_s = 0.0
        self.metrics_text = ""
        self.pps = 0.0
        self.cpu_percent = 0.0
        self._sampled: tuple[float, int, float] | None = None
        #: When the worker last sent anything (it reports its load every second).
        self.heard_at = asyncio.get_running_loop().time()
        self._reader = asyncio.create_task(self._read(), name=f"worker {index} reader")

    @classmethod
    async def spawn(
        cls, spec: WorkerSpec, deliver: Deliver, announce: Announce | None = None
    ) -> WorkerLink:
        """Start the worker process on one end of a socket pair, its spec on stdin."""
        front, child = socket.socketpair()
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "media.workers.process",
                str(child.fileno()),
                str(os.getpid()),
                stdin=asyncio.subprocess.PIPE,
                pass_fds=(child.fileno(),),
            )
        except BaseException:
            front.close()
            raise
        finally:
            child.close()
        try:
            assert process.stdin is not None
            process.stdin.write(pickle.dumps(spec))
            with contextlib.suppress(ConnectionError):
                await process.stdin.drain()
            process.stdin.close()
            channel = await Channel.over(front)
        except BaseException:  # cancelled while starting (the pool closes): no orphan
            front.close()
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            raise
        return cls(spec.index, process, channel, deliver, announce)

    @property
    def live(self) -> bool:
        return self.ready.is_set() and not self._reader.done()

    async def request(self, frame: Frame) -> WorkerError | None:
        """Send a request and wait for its ``done``: the error the worker raised, or
        None, also when the worker went away meanwhile (the pool tells its rooms)."""
        request_id = next(self._ids)
        future: asyncio.Future[WorkerError | None] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        try:
            await self._channel.send({**frame, "id": request_id})
            return await future
        except ChannelClosed:
            return None
        finally:
            self._pending.pop(request_id, None)

    async def _read(self) -> None:
        try:
            async for frame in self._channel.frames():
                self.heard_at = asyncio.get_running_loop().time()
                await self._on_frame(frame)
        except Exception:
            logger.exception("worker %d: reading its socket failed", self.index)
        finally:
            for future in self._pending.values():
                if not future.done():
                    future.set_result(None)
            await self._channel.close()

    async def _on_frame(self, frame: Frame) -> None:
        kind = frame["kind"]
        if kind == "done":
            future = self._pending.get(frame.get("id"))  # type: ignore[arg-type]
            if future is not None and not future.done():
                future.set_result(error_from(frame.get("error")))
        elif kind == "load":
            self._on_load(frame)
        elif kind == "rooms":
            self._on_rooms(frame.get("rooms"))
        elif kind == "announce":
            call_id, state = frame.get("call_id"), frame.get("state")
            if self._announce is not None and isinstance(call_id, str) and isinstance(state, dict):
                await self._announce(call_id, state)
        elif kind in ("send_to", "send_error"):
            call_id, pid = frame.get("call_id"), frame.get("participant_id")
            if not isinstance(call_id, str) or not isinstance(pid, str):
                return
            if kind == "send_to" and isinstance(frame.get("message"), dict):
                await self._deliver(call_id, pid, frame["message"])
            elif kind == "send_error":
                error = error_from(frame)
                if error is not None:
                    await self._deliver(call_id, pid, error)

    def _on_rooms(self, rooms: Any) -> None:
        if isinstance(rooms, dict):
            self.rooms = {
                str(call_id): frozenset(str(p) for p in pids)
                for call_id, pids in rooms.items()
                if isinstance(pids, list)
            }

    def _on_load(self, frame: Frame) -> None:
        self._on_rooms(frame.get("rooms"))
        packets, cpu_s, text = frame.get("packets"), frame.get("cpu_s"), frame.get("metrics")
        if isinstance(packets, int):
            self.packets = packets
        if isinstance(cpu_s, int | float):
            self.cpu_s = float(cpu_s)
        if isinstance(text, str):
            self.metrics_text = text
        now = asyncio.get_running_loop().time()
        if self._sampled is not None:
            then, packets_then, cpu_then = self._sampled
            elapsed = now - then
            if elapsed > 0:
                self.pps = max(0.0, (self.packets - packets_then) / elapsed)
                self.cpu_percent = max(0.0, 100.0 * (self.cpu_s - cpu_then) / elapsed)
        self._sampled = (now, self.packets, self.cpu_s)
        if not self.ready.is_set():
            logger.info("media worker %d up (pid %d)", self.index, self.process.pid)
            self.ready.set()

    async def finished(self) -> int:
        """Wait until the socket closed and the process exited; its exit status. A
        process that keeps running with its socket closed is killed."""
        await asyncio.wait([self._reader])
        try:
            return await asyncio.wait_for(self.process.wait(), 2.0)
        except TimeoutError:
            self.kill()
            return await self.process.wait()

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()

    async def close(self, timeout: float) -> None:  # noqa: ASYNC109 - the bound of a graceful stop
        """Ask the worker to close its rooms and exit; kill it after ``timeout`` s."""
        with contextlib.suppress(ChannelClosed):
            await self._channel.send({"kind": "close"})
        try:
            await asyncio.wait_for(self.process.wait(), timeout)
        except TimeoutError:
            logger.warning("media worker %d did not stop in %.0f s: killed", self.index, timeout)
            self.kill()
            await self.process.wait()
        await self._channel.close()
        await asyncio.wait([self._reader])
