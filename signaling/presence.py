"""Presence and roster: who is online, and the coalescing of roster updates.

Roster updates (``join`` and ``presence``) to the sockets of a call go
through one :class:`RosterBatcher` per node. The first update after a quiet
``window_s`` goes out at once; later ones are held until the window ends and
then flushed together: a socket for which the held updates concern one other
participant gets them as they were (so one peer's drop and reconnect still
reads as ``presence`` off, then on); one for which they concern several gets
a single ``participants`` roster, read from the store at flush time, instead.
N participants joining within a window therefore cost each socket O(1)
messages, O(N) in all, not O(N²).

Envelopes on ``call:{call_id}``: ``presence`` ``{node, participant_id,
online, sync?}`` (a socket opened or dropped on ``node``) and ``sync``
``{node}`` (``node`` just subscribed: the others answer with their
``presence``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from server.errors import HuddleError
from server.models import Call
from signaling.bus import BusUnavailable, Envelope
from signaling.connection import Connection
from signaling.errors import CloseCode, SignalError, edge_error, error_message
from signaling.metrics import SignalingMetrics
from signaling.protocol import Message, encode
from signaling.registry import SocketRegistry

logger = logging.getLogger(__name__)

#: Default coalescing window for roster updates.
ROSTER_WINDOW_S = 0.05


@dataclass
class _Held:
    """One held update: ``message`` about ``pid``; ``skip_self``: not for pid's own socket."""

    pid: str
    message: Message
    skip_self: bool


@dataclass
class _Window:
    task: asyncio.Task[None] | None = None
    held: list[_Held] = field(default_factory=list)


class RosterBatcher:
    """Per call: the first roster update at once, the rest coalesced per window."""

    def __init__(
        self,
        registry: SocketRegistry,
        roster: Callable[[str], Awaitable[Message | None]],
        window_s: float = ROSTER_WINDOW_S,
    ) -> None:
        self._registry = registry
        self._roster = roster
        self.window_s = window_s
        self._windows: dict[str, _Window] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        #: Held per call while a flush is being sent, so whatever follows it waits.
        self._sending: dict[str, asyncio.Lock] = {}

    def post(self, call_id: str, pid: str, message: Message, *, skip_self: bool = False) -> None:
        """A stamped roster update about ``pid`` for every local socket of the call."""
        held = _Held(pid, message, skip_self)
        window = self._windows.get(call_id)
        if window is not None:
            window.held.append(held)
            return
        self._send(call_id, [held])
        self._open(call_id)

    def _open(self, call_id: str) -> None:
        window = self._windows[call_id] = _Window()
        task = asyncio.create_task(self._wait(call_id), name=f"signaling:roster:{call_id}")
        window.task = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _wait(self, call_id: str) -> None:
        await asyncio.sleep(self.window_s)
        async with self._sending.setdefault(call_id, asyncio.Lock()):
            window = self._windows.get(call_id)
            if window is None or window.task is not asyncio.current_task():
                return  # flushed or dropped meanwhile
            del self._windows[call_id]
            if not window.held:
                return
            self._open(call_id)  # a steady stream of updates keeps being coalesced
            await self._flush(call_id, window.held)

    async def flush(self, call_id: str | None = None) -> None:
        """Send what is held now (for one call, or all), ending their windows; returns
        once any flush already under way for the call is sent too."""
        for cid in [call_id] if call_id is not None else list(self._windows):
            async with self._sending.setdefault(cid, asyncio.Lock()):
                window = self._windows.pop(cid, None)
                if window is None:
                    continue
                if window.task is not None:
                    window.task.cancel()
                if window.held:
                    await self._flush(cid, window.held)

    def drop(self, call_id: str) -> None:
        """The call is over here: discard what is held for it."""
        window = self._windows.pop(call_id, None)
        if window is not None and window.task is not None:
            window.task.cancel()
        lock = self._sending.get(call_id)
        if lock is not None and not lock.locked():
            del self._sending[call_id]

    async def close(self) -> None:
        tasks = list(self._tasks)
        self._windows.clear()
        self._sending.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _flush(self, call_id: str, held: list[_Held]) -> None:
        roster: Message | None = None
        if any(len(_about(held, pid)) > 1 for pid in self._registry.local(call_id)):
            try:
                roster = await self._roster(call_id)
            except HuddleError as exc:
                logger.warning("Call(%s) roster not read, sending updates: %s", call_id, exc)
        self._send(call_id, held, roster)

    def _send(self, call_id: str, held: list[_Held], roster: Message | None = None) -> None:
        roster_text = encode(roster) if roster is not None else None
        texts: dict[int, str] = {}
        for pid, conn in list(self._registry.local(call_id).items()):
            mine = [h for h in held if not (h.skip_self and h.pid == pid)]
            if roster_text is not None and len(_about(mine, pid)) > 1:
                conn.send_text(roster_text)
                continue
            for h in mine:
                text = texts.get(id(h))
                if text is None:
                    text = texts[id(h)] = encode(h.message)
                conn.send_text(text)


def _about(held: list[_Held], recipient: str) -> set[str]:
    """The participants (other than the recipient) the held updates concern."""
    return {h.pid for h in held if h.pid != recipient}


class Presence:
    """Presence of participants, local and from other nodes, and the roster."""

    def __init__(
        self,
        registry: SocketRegistry,
        get_call: Callable[[str], Awaitable[Call | None]],
        metrics: SignalingMetrics,
        *,
        window_s: float = ROSTER_WINDOW_S,
        on_moved: Callable[[str, str], None],
    ) -> None:
        self._registry = registry
        self._get_call = get_call
        self._metrics = metrics
        self._on_moved = on_moved
        self.batcher = RosterBatcher(registry, self._current_roster, window_s)

    def roster(self, call: Call) -> Message:
        entries = [
            {
                "participant_id": p.user_id,
                "name": p.name,
                "muted": p.muted,
                "video": p.video,
                "online": self._registry.is_online(call.call_id, p.user_id),
            }
            for p in call.joined
        ]
        return self._registry.server_message(
            call.call_id, {"type": "participants", "participants": entries}
        )

    async def welcome(self, conn: Connection) -> None:
        """The roster and the call's mode, as they are now (on connect, on ``join``)."""
        call = await self._get_call(conn.call_id)
        if call is None or call.is_ended:
            conn.close(CloseCode.NORMAL, "call ended")
            return
        conn.send_text(encode(self.roster(call)))
        mode = {"type": "mode", "mode": call.mode.value}
        conn.send_text(encode(self._registry.server_message(call.call_id, mode)))

    def degraded(self, conn: Connection, exc: Exception) -> None:
        """Tell one socket that messages may be lost (the bus is down)."""
        error = edge_error(exc)
        assert isinstance(error, SignalError)
        self._metrics.error(error.code)
        text = f"signaling is degraded, messages may be lost: {error.message}"
        conn.send_text(encode(error_message(error.code, text, call_id=conn.call_id)))

    async def on_bus_down(self, call_ids: list[str]) -> None:
        for call_id in call_ids:
            for conn in list(self._registry.local(call_id).values()):
                self.degraded(conn, BusUnavailable("the message bus is down"))
        logger.warning("signaling degraded for %d calls", len(call_ids))

    async def on_bus_restored(self, call_ids: list[str]) -> None:
        """Resubscribed: ask the other nodes who is online, refresh every roster."""
        registry = self._registry
        for call_id in call_ids:
            with contextlib.suppress(BusUnavailable):
                await registry.publish(call_id, {"kind": "sync", "node": registry.node_id})
            for conn in list(registry.local(call_id).values()):
                try:
                    await self.welcome(conn)
                except HuddleError as exc:
                    logger.warning("%r: roster refresh failed: %s", conn, exc.message)

    async def _current_roster(self, call_id: str) -> Message | None:
        call = await self._get_call(call_id)
        if call is None or call.is_ended:
            return None
        return self.roster(call)

    def to_local(self, call_id: str, pid: str, *, online: bool) -> None:
        message = self._registry.server_message(
            call_id, {"type": "presence", "participant_id": pid, "online": online}
        )
        self.batcher.post(call_id, pid, message, skip_self=True)

    async def announce(self, call_id: str, pid: str, *, online: bool) -> None:
        """This node's socket of ``pid`` opened or went: tell the other nodes.
        Raises :class:`BusUnavailable`."""
        await self._registry.publish(
            call_id,
            {
                "kind": "presence",
                "node": self._registry.node_id,
                "participant_id": pid,
                "online": online,
            },
        )

    async def on_presence(self, call_id: str, envelope: Envelope) -> None:
        registry = self._registry
        node, pid = envelope.get("node"), envelope.get("participant_id")
        if node == registry.node_id or not isinstance(node, str) or not isinstance(pid, str):
            return
        was_online = registry.is_online(call_id, pid)
        remote = registry.remote.setdefault(call_id, {})
        if envelope.get("online"):
            remote[pid] = node
            if not envelope.get("sync"):
                # The participant is on another node now: its seat is kept there.
                self._on_moved(call_id, pid)
        elif remote.get(pid) == node:
            del remote[pid]
        if not remote:
            registry.remote.pop(call_id, None)
        now_online = registry.is_online(call_id, pid)
        if now_online != was_online:
            self.to_local(call_id, pid, online=now_online)
        await registry.maybe_unsubscribe(call_id)

    async def on_sync(self, call_id: str, envelope: Envelope) -> None:
        registry = self._registry
        if envelope.get("node") == registry.node_id:
            return
        for pid in list(registry.local(call_id)):
            with contextlib.suppress(BusUnavailable):
                await registry.publish(
                    call_id,
                    {
                        "kind": "presence",
                        "node": registry.node_id,
                        "participant_id": pid,
                        "online": True,
                        "sync": True,
                    },
                )
