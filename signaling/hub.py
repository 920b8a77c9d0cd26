"""The signaling hub: this node's sockets, routing over the bus, presence, the SFU seam.

Every message between sockets travels through the :class:`MessageBus`, also on
one node, so one code path serves one node and many. A node subscribes to a
call's channel while it has a socket of that call, a pending disconnect leave
for it, or the call's SFU room, and delivers what arrives to its own sockets.

Envelopes on ``call:{call_id}`` (``kind``):

- ``deliver`` ``{message, to?, exclude?}``: a stamped message for every local
  socket of the call, or only ``to``'s, never ``exclude``'s.
- ``presence`` ``{node, participant_id, online}``: a socket opened or dropped on
  ``node``; an ``online`` on another node cancels this node's pending leave for
  that participant and closes its older socket (``REPLACED``).
- ``sync`` ``{node}``: ``node`` just subscribed; the others answer with their
  ``presence``.
- ``sfu`` ``{owner, participant_id, message}``: for the SFU of the owning node only.

A ``deliver`` to one participant (``to``) and an ``sfu`` envelope concern one
node only: they go to that node's channel ``huddle:node:{node_id}`` (the
participant's node as the ``presence`` envelopes tell it, the room's owner),
and straight to the socket when it is on this node. Only while the
participant's node is unknown does a targeted ``deliver`` take the call channel.
Broadcasts (lifecycle events, ``presence``, ``sync``) always do.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from redis.exceptions import RedisError

from server.auth import Identity
from server.calls import CallService
from server.config import SignalingSettings
from server.errors import HuddleError
from server.events import CallEvent
from server.lifecycle import EventKind
from server.models import Call, utcnow
from signaling.bus import BusUnavailable, Envelope, MessageBus
from signaling.connection import Connection
from signaling.metrics import SignalingMetrics
from signaling.placement import RoomPlacement
from signaling.protocol import (
    SERVER_ID,
    SFU_ID,
    CloseCode,
    ErrorCode,
    Message,
    SignalError,
    encode,
    error_message,
    stamp,
)
from signaling.seats import SeatRegistry
from signaling.sfu import SfuEndpoint

logger = logging.getLogger(__name__)


#: At most this many joined participants are checked per orphaned-seat scan.
ORPHAN_SCAN_LIMIT = 10_000


@dataclass(frozen=True)
class HubOptions:
    """Knobs beyond :class:`SignalingSettings` (tests shorten them)."""

    disconnect_grace_s: float = 10.0
    write_timeout_s: float = 10.0
    error_burst: int = 20
    errors_per_second: float = 1.0
    shutdown_wait_s: float = 5.0


class SignalingHub:
    def __init__(
        self,
        calls: CallService,
        bus: MessageBus,
        placement: RoomPlacement,
        settings: SignalingSettings,
        metrics: SignalingMetrics,
        *,
        node_id: str,
        options: HubOptions | None = None,
        seats: SeatRegistry | None = None,
    ) -> None:
        self.calls = calls
        self.seats = seats
        self.settings = settings
        self.metrics = metrics
        self.node_id = node_id
        self.options = options or HubOptions()
        self._bus = bus
        self._placement = placement
        self._sfu: SfuEndpoint | None = None
        self._conns: dict[str, dict[str, Connection]] = {}
        self._remote: dict[str, dict[str, str]] = {}  # call -> participant -> node
        self._pending: dict[str, dict[str, asyncio.Task[None]]] = {}  # disconnect leaves
        self._tasks: set[asyncio.Task[None]] = set()
        self._subscribed: set[str] = set()
        self._locks: dict[str, asyncio.Lock] = {}
        self._active = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._shutting_down = False
        #: (call, participant) -> when a scan first saw it joined without any socket.
        self._unseated: dict[tuple[str, str], float] = {}
        if seats is not None:
            seats.local_seats = self._local_seats
            seats.on_rebuilt = self.metrics.seats_rebuilt.inc

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        await self._bus.start(self)
        self.calls.events.add(self)
        if self.seats is not None:
            self.seats.start()
        task = asyncio.create_task(self._scan_loop(), name="signaling:seat-scan")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def attach_sfu(self, endpoint: SfuEndpoint | None) -> None:
        """Plug in (or remove) the SFU; without one, SFU messages get ``sfu_unavailable``."""
        self._sfu = endpoint

    async def shutdown(self) -> None:
        """Stop accepting and close every socket with 1001 (going away), then wait
        briefly for their handlers; clients reconnect to another node."""
        self._shutting_down = True
        for conn in self._all_connections():
            conn.close(CloseCode.GOING_AWAY, "server shutting down", flush=False)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.options.shutdown_wait_s):
                await self._idle.wait()

    async def close(self) -> None:
        """Idempotent: cancel owned tasks, release rooms, close placement and bus."""
        self.calls.events.remove(self)
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._pending.clear()
        for call_id in sorted(self._placement.owned):
            await self._close_room(call_id)
        if self.seats is not None:
            await self.seats.close()
        await self._placement.close()
        await self._bus.close()
        self._subscribed.clear()
        self._remote.clear()

    # -- admission (the handler) -----------------------------------------------------------

    @property
    def bus_healthy(self) -> bool:
        return self._bus.healthy

    @property
    def connection_count(self) -> int:
        return sum(len(conns) for conns in self._conns.values())

    def pending_leaves(self, call_id: str) -> int:
        """Disconnect leaves waiting out their grace period for this call."""
        return len(self._pending.get(call_id, {}))

    def try_acquire(self) -> bool:
        """Reserve a connection slot for an upgrade in progress; False when full."""
        if self._shutting_down or self._active >= self.settings.max_connections:
            return False
        self._active += 1
        self._idle.clear()
        return True

    def release(self) -> None:
        self._active -= 1
        if self._active == 0:
            self._idle.set()

    async def register(self, conn: Connection) -> None:
        """A socket is up: replace an older one, cancel a pending leave, subscribe,
        announce presence, and send the roster and mode."""
        call_id, pid = conn.call_id, conn.participant_id
        was_online = self._is_online(call_id, pid)
        conns = self._conns.setdefault(call_id, {})
        old = conns.get(pid)
        conns[pid] = conn
        self.metrics.connections.inc()
        self._cancel_pending(call_id, pid)
        if old is not None:
            old.close(CloseCode.REPLACED, "replaced by a newer connection")
        await self._ensure_subscribed(call_id)
        if self.seats is not None:
            await self.seats.attach(call_id, pid)
        if not was_online:
            self._presence_to_local(call_id, pid, online=True)
        try:
            await self._bus.publish(
                call_id,
                {"kind": "presence", "node": self.node_id, "participant_id": pid, "online": True},
            )
        except BusUnavailable as exc:
            self._degraded(conn, exc)
        await self.send_welcome(conn)

    def connection_ended(self, conn: Connection) -> asyncio.Task[None]:
        """The reader ended: stop the writer and unregister, in a task the hub owns."""

        async def finish() -> None:
            await conn.stop()
            await self.unregister(conn)

        task = asyncio.create_task(finish(), name=f"signaling:finish:{conn.id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def unregister(self, conn: Connection) -> None:
        """A socket is gone; unless it left, was replaced or the server is stopping,
        the participant leaves the call after the grace period."""
        call_id, pid = conn.call_id, conn.participant_id
        conns = self._conns.get(call_id, {})
        if conns.get(pid) is not conn:
            return  # replaced: the newer socket holds the seat
        del conns[pid]
        if not conns:
            del self._conns[call_id]
        self.metrics.connections.dec()
        code = conn.close_code
        if code in (CloseCode.TOO_SLOW, CloseCode.HEARTBEAT_TIMEOUT):
            self.metrics.close(code)  # decided by the connection's writer, counted here
        if code not in (CloseCode.NORMAL, CloseCode.GOING_AWAY, CloseCode.REPLACED):
            self._schedule_leave(call_id, pid, conn.name)
        if code != CloseCode.REPLACED and not self._is_online(call_id, pid):
            self._presence_to_local(call_id, pid, online=False)
            with contextlib.suppress(BusUnavailable):
                await self._bus.publish(
                    call_id,
                    {
                        "kind": "presence",
                        "node": self.node_id,
                        "participant_id": pid,
                        "online": False,
                    },
                )
        await self._maybe_unsubscribe(call_id)

    async def send_welcome(self, conn: Connection) -> None:
        """The roster and the call's mode, as they are now."""
        call = await self.calls.store.get_call(conn.call_id)
        if call is None or call.is_ended:
            conn.close(CloseCode.NORMAL, "call ended")
            return
        conn.send_text(encode(self._roster(call)))
        conn.send_text(
            encode(self._server_message(call.call_id, {"type": "mode", "mode": call.mode.value}))
        )

    # -- client messages ------------------------------------------------------------------

    async def handle(self, conn: Connection, message: Message) -> None:
        """Route one validated client message. Raises :class:`SignalError`,
        :class:`HuddleError` or :class:`BusUnavailable` for the reader to answer."""
        kind = message["type"]
        call_id, pid = conn.call_id, conn.participant_id
        if kind == "ping":
            conn.send_text(encode(self._server_message(call_id, {"type": "pong"})))
        elif kind == "pong":
            pass
        elif kind == "join":
            await self.send_welcome(conn)
        elif kind == "leave":
            await self.calls.leave(Identity(pid, conn.name), call_id)
            conn.close(CloseCode.NORMAL, "left the call")
        elif kind == "mute":
            await self.calls.set_media(
                pid, call_id, muted=message.get("muted"), video=message.get("video")
            )
        else:
            stamp(message, sender_id=pid, call_id=call_id)
            target = message["target_id"]
            if target == SFU_ID:
                await self._to_sfu(conn, message)
            elif target == pid:
                raise SignalError(ErrorCode.INVALID_TARGET, "a message cannot target its sender")
            else:
                await self._deliver_to(
                    call_id, target, {"kind": "deliver", "message": message, "to": target}
                )

    # -- the SFU's side -------------------------------------------------------------------

    async def send_to(self, call_id: str, participant_id: str, message: Message) -> None:
        """Deliver an SFU message to one participant, on whichever node holds its
        socket. Stamps ``sender_id: "sfu"``; lost (and logged) while the bus is down."""
        out = stamp(dict(message), sender_id=SFU_ID, call_id=call_id)
        try:
            await self._deliver_to(
                call_id, participant_id, {"kind": "deliver", "message": out, "to": participant_id}
            )
        except BusUnavailable as exc:
            logger.warning("Call(%s) SFU message to %s lost: %s", call_id, participant_id, exc)

    async def send(self, call_id: str, participant_id: str, message: Message) -> None:
        """Alias of :meth:`send_to`, so the hub is media's ``SfuSignaling``."""
        await self.send_to(call_id, participant_id, message)

    async def _to_sfu(self, conn: Connection, message: Message) -> None:
        call_id, pid = conn.call_id, conn.participant_id
        if call_id in self._placement.owned:
            owner: str | None = self.node_id
        elif self._sfu is not None:
            owner = await self._placement.claim(call_id)
            if owner == self.node_id:
                await self._ensure_subscribed(call_id)
        else:
            owner = await self._placement.owner(call_id)
        if owner is None or (owner == self.node_id and self._sfu is None):
            raise SignalError(ErrorCode.SFU_UNAVAILABLE, "no SFU serves this call")
        if owner == self.node_id:
            await self._sfu_signal(call_id, pid, message)
        else:
            await self._bus.publish(
                call_id,
                {"kind": "sfu", "owner": owner, "participant_id": pid, "message": message},
                node=owner,
            )

    async def _sfu_signal(self, call_id: str, pid: str, message: Message) -> None:
        sfu = self._sfu
        if sfu is None:
            await self._reply_error(call_id, pid, ErrorCode.SFU_UNAVAILABLE, "no SFU here", message)
            return
        try:
            await sfu.handle_signal(call_id, pid, message)
        except Exception as exc:
            code = getattr(exc, "code", None)
            if not isinstance(code, str):
                logger.exception("Call(%s) SFU failed on %s", call_id, message["type"])
                code = ErrorCode.SFU_ERROR
            await self._reply_error(call_id, pid, code, str(exc) or code, message)

    async def _reply_error(
        self, call_id: str, pid: str, code: str, text: str, about: Message
    ) -> None:
        error = error_message(code, text, call_id=call_id, request_id=about.get("id"))
        self.metrics.error(code)
        with contextlib.suppress(BusUnavailable):
            await self._deliver_to(call_id, pid, {"kind": "deliver", "message": error, "to": pid})

    async def _close_room(self, call_id: str) -> None:
        if call_id not in self._placement.owned:
            return
        if self._sfu is not None:
            try:
                await self._sfu.close_room(call_id)
            except Exception:
                logger.exception("Room(%s) close failed", call_id)
        await self._placement.release(call_id)

    async def on_room_lost(self, call_id: str) -> None:
        """Placement lost this node's claim (e.g. the key expired during an outage)."""
        if self._sfu is not None:
            await self._sfu.close_room(call_id)
        await self._maybe_unsubscribe(call_id)

    # -- lifecycle events (CallEventListener) ---------------------------------------------

    async def on_call_event(self, event: CallEvent) -> None:
        """Runs on the node where the transition happened: publish it once."""
        message = _event_message(event)
        if message is None:
            return
        call_id = event.call.call_id
        envelope: Envelope = {
            "kind": "deliver",
            "message": self._server_message(call_id, message),
        }
        if event.kind == EventKind.LEFT:
            envelope["exclude"] = event.user_id
        try:
            await self._bus.publish(call_id, envelope)
        except BusUnavailable as exc:
            logger.warning("Call(%s) %s not announced: %s", call_id, event.kind, exc)

    # -- bus listener ---------------------------------------------------------------------

    async def on_bus_message(self, call_id: str, envelope: Envelope) -> None:
        kind = envelope.get("kind")
        if kind == "deliver":
            await self._on_deliver(call_id, envelope)
        elif kind == "presence":
            await self._on_presence(call_id, envelope)
        elif kind == "sync":
            await self._on_sync(call_id, envelope)
        elif (
            kind == "sfu"
            and envelope.get("owner") == self.node_id
            and call_id in self._placement.owned
        ):
            await self._sfu_signal(call_id, envelope["participant_id"], envelope["message"])

    async def on_bus_down(self, call_ids: list[str]) -> None:
        error = ErrorCode.SIGNALING_DEGRADED
        for call_id in call_ids:
            for conn in list(self._conns.get(call_id, {}).values()):
                self._degraded(conn, BusUnavailable("the message bus is down"))
        logger.warning("signaling degraded for %d calls (%s)", len(call_ids), error)

    async def on_bus_restored(self, call_ids: list[str]) -> None:
        for call_id in call_ids:
            with contextlib.suppress(BusUnavailable):
                await self._bus.publish(call_id, {"kind": "sync", "node": self.node_id})
            for conn in list(self._conns.get(call_id, {}).values()):
                try:
                    await self.send_welcome(conn)
                except HuddleError as exc:
                    logger.warning("%r: roster refresh failed: %s", conn, exc.message)

    async def _on_deliver(self, call_id: str, envelope: Envelope) -> None:
        message = envelope.get("message")
        if not isinstance(message, dict):
            return
        to, exclude = envelope.get("to"), envelope.get("exclude")
        conns = self._conns.get(call_id, {})
        targets = [conns[to]] if to in conns else [] if to else list(conns.values())
        if targets:
            text = encode(message)
            for conn in targets:
                if conn.participant_id != exclude:
                    conn.send_text(text)
        kind = message.get("type")
        if kind == "leave" and isinstance(message.get("participant_id"), str):
            await self._on_left(call_id, message["participant_id"])
        elif kind == "call_ended":
            await self._on_ended(call_id)

    async def _on_left(self, call_id: str, pid: str) -> None:
        self._cancel_pending(call_id, pid)
        conn = self._conns.get(call_id, {}).get(pid)
        if conn is not None:
            conn.close(CloseCode.NORMAL, "left the call")
        if call_id in self._placement.owned and self._sfu is not None:
            try:
                await self._sfu.participant_gone(call_id, pid)
            except Exception:
                logger.exception("Room(%s) participant_gone(%s) failed", call_id, pid)

    async def _on_ended(self, call_id: str) -> None:
        for pid in list(self._pending.get(call_id, {})):
            self._cancel_pending(call_id, pid)
        for conn in list(self._conns.get(call_id, {}).values()):
            conn.close(CloseCode.NORMAL, "call ended")
        await self._close_room(call_id)
        await self._maybe_unsubscribe(call_id)

    async def _on_presence(self, call_id: str, envelope: Envelope) -> None:
        node, pid = envelope.get("node"), envelope.get("participant_id")
        if node == self.node_id or not isinstance(node, str) or not isinstance(pid, str):
            return
        was_online = self._is_online(call_id, pid)
        remote = self._remote.setdefault(call_id, {})
        if envelope.get("online"):
            remote[pid] = node
            if not envelope.get("sync"):
                # The participant is on another node now: its seat is kept there.
                self._cancel_pending(call_id, pid)
                local = self._conns.get(call_id, {}).get(pid)
                if local is not None:
                    local.close(CloseCode.REPLACED, "reconnected on another node")
        elif remote.get(pid) == node:
            del remote[pid]
        if not remote:
            self._remote.pop(call_id, None)
        now_online = self._is_online(call_id, pid)
        if now_online != was_online:
            self._presence_to_local(call_id, pid, online=now_online)
        await self._maybe_unsubscribe(call_id)

    async def _on_sync(self, call_id: str, envelope: Envelope) -> None:
        if envelope.get("node") == self.node_id:
            return
        for pid in list(self._conns.get(call_id, {})):
            with contextlib.suppress(BusUnavailable):
                await self._bus.publish(
                    call_id,
                    {
                        "kind": "presence",
                        "node": self.node_id,
                        "participant_id": pid,
                        "online": True,
                        "sync": True,
                    },
                )

    # -- disconnect leaves ----------------------------------------------------------------

    def expect_reconnect(self, call_id: str, pid: str, name: str | None) -> bool:
        """Treat ``pid`` as just disconnected unless it has a socket here.

        For participants whose sockets died with a previous process: they
        leave after the grace period unless they reconnect first. Returns
        whether a leave was scheduled.
        """
        if pid in self._conns.get(call_id, {}) or pid in self._pending.get(call_id, {}):
            return False
        self._schedule_leave(call_id, pid, name)
        return True

    def _schedule_leave(
        self,
        call_id: str,
        pid: str,
        name: str | None,
        lost_node: str | None = None,
        *,
        never_connected: bool = False,
    ) -> None:
        """Leave after the grace period (at once when ``never_connected``);
        ``lost_node``: the seat holder whose socket went away."""
        self._cancel_pending(call_id, pid)
        if lost_node is None:
            lost_node = self.seats.holder if self.seats is not None else self.node_id
        task = asyncio.create_task(
            self._leave_after_grace(call_id, pid, name, lost_node, never_connected),
            name=f"signaling:leave:{pid}",
        )
        self._pending.setdefault(call_id, {})[pid] = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _cancel_pending(self, call_id: str, pid: str) -> None:
        pending = self._pending.get(call_id)
        if pending is None:
            return
        task = pending.pop(pid, None)
        if not pending:
            del self._pending[call_id]
        if task is not None:
            task.cancel()

    async def _leave_after_grace(
        self, call_id: str, pid: str, name: str | None, lost_node: str, never_connected: bool
    ) -> None:
        """Leave once the grace period is over, retrying (backing off up to
        ``settings.leave_retry_s``) while the database or Redis is away, until
        the leave lands, is moot (already left, call ended), or the participant
        is back (a socket here, or a seat on another live node)."""
        if not never_connected:
            await asyncio.sleep(self.options.disconnect_grace_s)
        delay = min(0.25, self.settings.leave_retry_s)
        attempts = 0
        try:
            while True:
                # Out of the pending map first: the leave's own event must not cancel us.
                self._unpend(call_id, pid)
                attempts += 1
                if await self._try_leave(call_id, pid, name, lost_node, attempts, never_connected):
                    return
                if pid in self._conns.get(call_id, {}) or pid in self._pending.get(call_id, {}):
                    return  # reconnected here during the attempt: its socket holds the seat
                # Pending again while we wait, so a reconnect (here or elsewhere) cancels us.
                task = asyncio.current_task()
                assert task is not None
                self._pending.setdefault(call_id, {})[pid] = task
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.settings.leave_retry_s)
        finally:
            await self._maybe_unsubscribe(call_id)

    def _unpend(self, call_id: str, pid: str) -> None:
        pending = self._pending.get(call_id, {})
        if pending.get(pid) is asyncio.current_task():
            del pending[pid]
            if not pending:
                self._pending.pop(call_id, None)

    async def _try_leave(
        self,
        call_id: str,
        pid: str,
        name: str | None,
        lost_node: str,
        attempt: int,
        never_connected: bool = False,
    ) -> bool:
        """One attempt at a server-started leave; False: try again later."""
        if self.seats is not None:
            try:
                if await self.seats.held_elsewhere(call_id, pid, lost_node):
                    logger.info("Call(%s) Participant(%s) reconnected elsewhere", call_id, pid)
                    return True
            except RedisError as exc:
                if lost_node != self.seats.holder:
                    # An adopted seat, unknown state: never kick someone who
                    # may have reconnected; ask Redis again shortly.
                    if attempt == 1:
                        logger.warning(
                            "Call(%s) leave of %s waits for Redis: %s", call_id, pid, exc
                        )
                    return False
                # Our own socket dropped: leave as without a seat map.
                logger.warning("Call(%s) seat of %s not checked, Redis: %s", call_id, pid, exc)
        try:
            await self.calls.leave(Identity(pid, name), call_id)
        except HuddleError as exc:
            if exc.status < 500:
                return True  # already left, or the call ended meanwhile: nothing to clean
            self._leave_failed(call_id, pid, attempt, exc.message)
            return False
        except Exception as exc:
            if attempt == 1:
                logger.exception("Call(%s) disconnect leave of %s failed", call_id, pid)
            self._leave_failed(call_id, pid, attempt, repr(exc))
            return False
        (
            self.metrics.connect_timeouts if never_connected else self.metrics.cleanup_on_disconnect
        ).inc()
        logger.info(
            "Call(%s) Participant(%s) left %s%s",
            call_id,
            pid,
            "without ever connecting" if never_connected else "after disconnect grace",
            f" (attempt {attempt})" if attempt > 1 else "",
        )
        return True

    def _leave_failed(self, call_id: str, pid: str, attempt: int, why: str) -> None:
        self.metrics.cleanup_failed.inc()
        log = logger.warning if attempt == 1 else logger.debug
        log(
            "Call(%s) disconnect leave of %s failed (attempt %d), retrying within %.1f s: %s",
            call_id,
            pid,
            attempt,
            self.settings.leave_retry_s,
            why,
        )

    # -- seats of dead nodes ----------------------------------------------------------------

    @property
    def scan_interval_s(self) -> float:
        """How often joined participants are checked (dead nodes, never connected)."""
        if self.seats is not None:
            return min(self.seats.scan_interval_s, self.settings.connect_timeout_s / 4)
        return max(0.05, min(5.0, self.settings.connect_timeout_s / 4))

    async def _scan_loop(self) -> None:
        while True:
            await asyncio.sleep(self.scan_interval_s)
            try:
                await self.scan_seats()
            except (RedisError, HuddleError) as exc:
                logger.warning("signaling: seat scan skipped: %s", exc)
            except Exception:
                logger.exception("signaling: seat scan failed")

    async def adopt_orphans(self) -> int:
        """Schedule the leave of participants whose socket's node is dead; returns how many."""
        adopted, _ = await self.scan_seats()
        return adopted

    async def scan_seats(self) -> tuple[int, int]:
        """One scan of the participants joined to live calls: adopt the seats of
        dead nodes, release those who never connected; returns (adopted, released)."""
        joined = await self.calls.store.joined_in_live_calls(limit=ORPHAN_SCAN_LIMIT)
        by_call: dict[str, list[tuple[str, str | None]]] = {}
        for call_id, pid, name in joined:
            by_call.setdefault(call_id, []).append((pid, name))
        holders: dict[str, dict[str, str]] = {}
        adopted = 0
        if self.seats is not None:
            holders = await self.seats.holders(list(by_call))
            adopted = await self._adopt(by_call, holders)
        released = await self._release_unconnected(by_call, holders)
        return adopted, released

    async def _adopt(
        self, by_call: dict[str, list[tuple[str, str | None]]], holders: dict[str, dict[str, str]]
    ) -> int:
        seats = self.seats
        assert seats is not None
        nodes = {node for seat in holders.values() for node in seat.values()}
        alive = await seats.alive(nodes)
        adopted = 0
        hold_s = self.options.disconnect_grace_s + seats.ttl_s
        for call_id, members in by_call.items():
            for pid, name in members:
                node = holders[call_id].get(pid)
                if node is None or node in alive or node == seats.holder:
                    continue  # never connected, or its node is alive
                if pid in self._conns.get(call_id, {}) or pid in self._pending.get(call_id, {}):
                    continue
                if await seats.claim(call_id, pid, hold_s):
                    logger.info(
                        "Call(%s) Participant(%s): node %s is gone, leaving after grace",
                        call_id,
                        pid,
                        node,
                    )
                    self._schedule_leave(call_id, pid, name, lost_node=node)
                    adopted += 1
        return adopted

    async def _release_unconnected(
        self, by_call: dict[str, list[tuple[str, str | None]]], holders: dict[str, dict[str, str]]
    ) -> int:
        """Joined participants with no socket anywhere leave once
        ``connect_timeout_s`` has passed since they joined.

        Without Redis: no socket here and no leave pending. With Redis: no
        seat record at all (seen so for two node TTLs, so that every live
        node's heartbeat has written back the seats Redis may have lost), or a
        seat of this very node whose socket is gone with no leave pending.
        Seats of other nodes are theirs (alive) or adopted (dead)."""
        seats = self.seats
        now = time.monotonic()
        # Two TTLs: every live node's heartbeat (every third of one) has had
        # several chances to write back seats Redis lost.
        hold_s = 2 * seats.ttl_s if seats is not None else 0.0
        unseated: dict[tuple[str, str], float] = {}
        candidates: dict[str, list[tuple[str, str | None, str]]] = {}
        for call_id, members in by_call.items():
            for pid, name in members:
                if pid in self._conns.get(call_id, {}) or pid in self._pending.get(call_id, {}):
                    continue
                node = None
                if seats is not None:
                    node = holders.get(call_id, {}).get(pid)
                    if node is not None and node != seats.holder:
                        continue
                key = (call_id, pid)
                since = unseated[key] = self._unseated.get(key, now)
                if now - since >= hold_s:
                    # lost_node: a seat of ours whose socket is gone, or nobody ("").
                    candidates.setdefault(call_id, []).append((pid, name, node or ""))
        self._unseated = unseated
        released = 0
        if not candidates:
            return 0
        deadline = utcnow() - timedelta(seconds=self.settings.connect_timeout_s)
        for call_id, waiting in candidates.items():
            call = await self.calls.store.get_call(call_id)
            if call is None or call.is_ended:
                continue
            for pid, name, lost_node in waiting:
                participant = call.participant(pid)
                if participant is None or participant.joined_at is None:
                    continue
                if not participant.is_joined or participant.joined_at > deadline:
                    continue
                if seats is not None and not await seats.claim(
                    call_id, pid, self.settings.connect_timeout_s
                ):
                    continue  # another node is releasing it
                logger.info(
                    "Call(%s) Participant(%s) joined %.0f s ago and never opened a "
                    "signaling socket: releasing the seat",
                    call_id,
                    pid,
                    (utcnow() - participant.joined_at).total_seconds(),
                )
                self._unseated.pop((call_id, pid), None)
                self._schedule_leave(call_id, pid, name, lost_node, never_connected=True)
                released += 1
        return released

    # -- subscriptions and presence -------------------------------------------------------

    async def _deliver_to(self, call_id: str, pid: str, envelope: Envelope) -> None:
        """A ``deliver`` for one participant: to its socket when it is on this node,
        else on its node's channel when known, else on the call's channel.
        Raises :class:`BusUnavailable`."""
        if pid in self._conns.get(call_id, {}):
            await self._on_deliver(call_id, envelope)
            return
        node = self._remote.get(call_id, {}).get(pid)
        await self._bus.publish(call_id, envelope, node=node)

    def _needs_channel(self, call_id: str) -> bool:
        return (
            call_id in self._conns or call_id in self._pending or call_id in self._placement.owned
        )

    async def _ensure_subscribed(self, call_id: str) -> None:
        lock = self._locks.setdefault(call_id, asyncio.Lock())
        async with lock:
            if call_id in self._subscribed:
                return
            await self._bus.subscribe(call_id)
            self._subscribed.add(call_id)
            with contextlib.suppress(BusUnavailable):
                await self._bus.publish(call_id, {"kind": "sync", "node": self.node_id})

    async def _maybe_unsubscribe(self, call_id: str) -> None:
        if call_id not in self._subscribed or self._needs_channel(call_id):
            return
        lock = self._locks.setdefault(call_id, asyncio.Lock())
        async with lock:
            if call_id not in self._subscribed or self._needs_channel(call_id):
                return
            self._subscribed.discard(call_id)
            self._remote.pop(call_id, None)
            await self._bus.unsubscribe(call_id)
        if not lock.locked():
            self._locks.pop(call_id, None)

    def _is_online(self, call_id: str, pid: str) -> bool:
        return pid in self._conns.get(call_id, {}) or pid in self._remote.get(call_id, {})

    def _presence_to_local(self, call_id: str, pid: str, *, online: bool) -> None:
        message = self._server_message(
            call_id, {"type": "presence", "participant_id": pid, "online": online}
        )
        text = encode(message)
        for conn in list(self._conns.get(call_id, {}).values()):
            if conn.participant_id != pid:
                conn.send_text(text)

    # -- helpers ----------------------------------------------------------------------------

    def _local_seats(self) -> list[tuple[str, str]]:
        return [(call_id, pid) for call_id, conns in self._conns.items() for pid in conns]

    def _all_connections(self) -> list[Connection]:
        return [conn for conns in self._conns.values() for conn in conns.values()]

    def _degraded(self, conn: Connection, exc: Exception) -> None:
        self.metrics.error(ErrorCode.SIGNALING_DEGRADED)
        error = error_message(
            ErrorCode.SIGNALING_DEGRADED,
            f"signaling is degraded, messages may be lost: {exc}",
            call_id=conn.call_id,
        )
        conn.send_text(encode(error))

    def _server_message(self, call_id: str, message: Message) -> Message:
        return stamp(message, sender_id=SERVER_ID, call_id=call_id)

    def _roster(self, call: Call) -> Message:
        entries = [
            {
                "participant_id": p.user_id,
                "name": p.name,
                "muted": p.muted,
                "video": p.video,
                "online": self._is_online(call.call_id, p.user_id),
            }
            for p in call.joined
        ]
        return self._server_message(call.call_id, {"type": "participants", "participants": entries})


def _event_message(event: CallEvent) -> dict[str, Any] | None:
    """The signaling message announcing a lifecycle event (None: nothing to say)."""
    call, user_id = event.call, event.user_id
    if event.kind == EventKind.JOINED and user_id is not None:
        participant = call.participant(user_id)
        return {
            "type": "join",
            "participant_id": user_id,
            "name": participant.name if participant else None,
        }
    if event.kind == EventKind.LEFT:
        return {"type": "leave", "participant_id": user_id}
    if event.kind == EventKind.DECLINED:
        return {"type": "declined", "participant_id": user_id}
    if event.kind == EventKind.INVITED:
        return {"type": "invited", "participant_id": user_id, "invited_ids": list(event.user_ids)}
    if event.kind == EventKind.MEDIA and user_id is not None:
        participant = call.participant(user_id)
        if participant is None:
            return None
        return {
            "type": "mute",
            "participant_id": user_id,
            "muted": participant.muted,
            "video": participant.video,
        }
    if event.kind == EventKind.MODE:
        return {"type": "mode", "mode": call.mode.value}
    if event.kind == EventKind.ENDED:
        reason = call.end_reason.value if call.end_reason else None
        return {"type": "call_ended", "reason": reason, "by_worker": event.by_worker}
    return None
