"""The message bus over Redis pub/sub, for several nodes.

One pub/sub connection per node carries every call channel this node serves
(``call:{call_id}``) and the node's own channel (``huddle:node:{node_id}``,
envelopes for this node only, each naming its ``call_id``). Publishes are
queued and sent by one flusher task, everything queued meanwhile in one
pipeline (one write, one round trip), in the order they were made, with each
run of envelopes for the same channel sent as one JSON list; each ``publish``
returns once Redis acknowledged its batch. When the
pub/sub connection breaks, the hub hears :meth:`BusListener.on_bus_down` (and
tells its clients ``signaling_degraded``); a reader task reconnects with
backoff, subscribes to every wanted channel again, and reports
:meth:`BusListener.on_bus_restored`. Clients keep their sockets throughout.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from signaling.bus import (
    CALL_CHANNEL,
    BusListener,
    BusUnavailable,
    Envelope,
    call_channel,
    node_channel,
)
from signaling.metrics import SignalingMetrics

logger = logging.getLogger(__name__)

_PREFIX = CALL_CHANNEL.split("{", 1)[0]
#: Errors that mean "the connection to Redis is gone" rather than a bug.
_CONNECTION_ERRORS = (RedisError, OSError, TimeoutError)


class RedisBus:
    def __init__(
        self,
        redis: Redis,
        metrics: SignalingMetrics,
        node_id: str,
        *,
        backoff_base_s: float = 0.1,
        backoff_cap_s: float = 5.0,
        subscribe_timeout_s: float = 2.0,
    ) -> None:
        self._redis = redis
        self._metrics = metrics
        self._node_channel = node_channel(node_id)
        self._backoff_base_s = backoff_base_s
        self._backoff_cap_s = backoff_cap_s
        self._subscribe_timeout_s = subscribe_timeout_s
        self._listener: BusListener | None = None
        self._wanted: set[str] = set()
        self._pubsub: PubSub | None = None
        self._connected = asyncio.Event()
        self._confirm: dict[str, asyncio.Future[None]] = {}
        self._task: asyncio.Task[None] | None = None
        self._ever_connected = False
        self._outbox: list[tuple[str, str, asyncio.Future[None]]] = []
        self._flusher: asyncio.Task[None] | None = None

    @property
    def healthy(self) -> bool:
        return self._connected.is_set()

    async def start(self, listener: BusListener) -> None:
        """Connect (or keep trying in the background) and start reading."""
        self._listener = listener
        self._task = asyncio.create_task(self._run(), name="signaling:redis-bus")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._subscribe_timeout_s):
                await self._connected.wait()

    async def publish(self, call_id: str, envelope: Envelope, *, node: str | None = None) -> None:
        if node is None:
            channel = call_channel(call_id)
            data = json.dumps(envelope, separators=(",", ":"))
        else:
            channel = node_channel(node)
            data = json.dumps({**envelope, "call_id": call_id}, separators=(",", ":"))
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._outbox.append((channel, data, done))
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush(), name="signaling:redis-publish")
        await done

    async def _flush(self) -> None:
        """Send what is queued, batch after batch, until nothing is."""
        batch: list[tuple[str, str, asyncio.Future[None]]] = []
        try:
            while self._outbox:
                batch, self._outbox = self._outbox, []
                pipe = self._redis.pipeline(transaction=False)
                for channel, data in _coalesce(batch):
                    pipe.publish(channel, data)
                try:
                    await pipe.execute()
                except _CONNECTION_ERRORS as exc:
                    self._metrics.bus_publish_failed.inc(len(batch))
                    _settle(batch, f"Redis publish failed: {exc}")
                else:
                    _settle(batch, None)
        finally:
            self._flusher = None
            # Cancelled (close): nobody will send these.
            _settle(batch + self._outbox, "the message bus is closed")
            self._outbox.clear()

    async def subscribe(self, call_id: str) -> None:
        """Returns once Redis confirmed the subscription, or at once while degraded
        (the reader subscribes when it reconnects)."""
        if call_id in self._wanted:
            return
        self._wanted.add(call_id)
        pubsub = self._pubsub
        if pubsub is None or not self.healthy:
            return
        channel = call_channel(call_id)
        waiter = self._confirm.setdefault(channel, asyncio.get_running_loop().create_future())
        try:
            async with asyncio.timeout(self._subscribe_timeout_s):
                await pubsub.subscribe(channel)
                await asyncio.shield(waiter)
        except (*_CONNECTION_ERRORS, BusUnavailable) as exc:
            self._metrics.redis_subscribe_failed.inc()
            logger.warning("Redis subscribe to %s failed: %s", channel, exc)
        finally:
            if self._confirm.get(channel) is waiter:
                del self._confirm[channel]

    async def unsubscribe(self, call_id: str) -> None:
        if call_id not in self._wanted:
            return
        self._wanted.discard(call_id)
        pubsub = self._pubsub
        if pubsub is not None and self.healthy:
            try:
                await pubsub.unsubscribe(call_channel(call_id))
            except _CONNECTION_ERRORS as exc:
                logger.debug("Redis unsubscribe failed (reconnect drops it): %s", exc)

    async def close(self) -> None:
        flusher = self._flusher
        if flusher is not None:
            flusher.cancel()
            await asyncio.gather(flusher, return_exceptions=True)
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        self._wanted.clear()
        self._listener = None

    # -- reader ------------------------------------------------------------------------

    async def _run(self) -> None:
        attempt = 0
        while True:
            pubsub = self._redis.pubsub()
            try:
                await self._connect(pubsub)
                attempt = 0
                await self._read(pubsub)
            except asyncio.CancelledError:
                raise
            except _CONNECTION_ERRORS as exc:
                was_up = self.healthy
                self._connected.clear()
                self._pubsub = None
                if was_up:
                    self._metrics.redis_pubsub_error.inc()
                    logger.warning("Redis pub/sub connection lost: %s", exc)
                    await self._tell_down()
                else:
                    self._metrics.redis_subscribe_failed.inc()
                    logger.info("Redis pub/sub reconnect failed: %s", exc)
            except Exception:
                logger.exception("Redis bus reader failed; restarting")
                self._connected.clear()
                self._pubsub = None
            finally:
                self._fail_waiters()
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
            attempt += 1
            await asyncio.sleep(min(self._backoff_cap_s, self._backoff_base_s * 2 ** (attempt - 1)))

    async def _connect(self, pubsub: PubSub) -> None:
        was_down = self._ever_connected
        channels = [call_channel(call_id) for call_id in sorted(self._wanted)]
        node = self._node_channel
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._confirm[node] = waiter
        # A confirmed subscription proves the connection before it is announced;
        # the reader is not running yet, so read the confirmation here.
        try:
            async with asyncio.timeout(self._subscribe_timeout_s):
                await pubsub.subscribe(node, *channels)
                while not waiter.done():
                    message = await pubsub.get_message(timeout=self._subscribe_timeout_s)
                    if message is not None:
                        await self._dispatch(message)
        finally:
            if self._confirm.get(node) is waiter:
                del self._confirm[node]
        self._pubsub = pubsub
        self._connected.set()
        self._ever_connected = True
        if was_down:
            logger.info("Redis pub/sub restored (%d channels)", len(channels))
            if self._listener is not None:
                await self._listener.on_bus_restored(sorted(self._wanted))

    async def _read(self, pubsub: PubSub) -> None:
        while True:
            message = await pubsub.get_message(timeout=1.0)
            if message is not None:
                await self._dispatch(message)

    async def _dispatch(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        channel = _text(message.get("channel"))
        if kind == "subscribe":
            waiter = self._confirm.get(channel)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
            return
        if kind != "message":
            return
        if channel == self._node_channel:
            call_id = None
        elif channel.startswith(_PREFIX):
            call_id = channel[len(_PREFIX) :]
        else:
            return
        try:
            payload = json.loads(message["data"])
        except (TypeError, ValueError):
            logger.warning("dropping a malformed bus message on %s", channel)
            return
        # One envelope, or a list of envelopes published back to back.
        for envelope in payload if isinstance(payload, list) else (payload,):
            if not isinstance(envelope, dict):
                continue
            envelope_call = call_id
            if envelope_call is None:
                envelope_call = envelope.pop("call_id", None)
                if not isinstance(envelope_call, str):
                    logger.warning("dropping a node message without call_id")
                    continue
            if self._listener is not None:
                try:
                    await self._listener.on_bus_message(envelope_call, envelope)
                except Exception:
                    logger.exception("Call(%s) bus message handler failed", envelope_call)

    async def _tell_down(self) -> None:
        if self._listener is not None:
            try:
                await self._listener.on_bus_down(sorted(self._wanted))
            except Exception:
                logger.exception("bus-down handler failed")

    def _fail_waiters(self) -> None:
        for waiter in self._confirm.values():
            if not waiter.done():
                waiter.set_exception(BusUnavailable("Redis pub/sub connection lost"))
                waiter.exception()  # retrieved: nobody may be waiting any more


def _coalesce(batch: list[tuple[str, str, asyncio.Future[None]]]) -> list[tuple[str, str]]:
    """Runs of envelopes for the same channel as one JSON list each: fewer
    messages for Redis and every subscriber to parse, and the order unchanged."""
    out: list[tuple[str, str]] = []
    run: list[str] = []
    for index, (channel, data, _) in enumerate(batch):
        run.append(data)
        if index + 1 == len(batch) or batch[index + 1][0] != channel:
            out.append((channel, run[0] if len(run) == 1 else "[" + ",".join(run) + "]"))
            run = []
    return out


def _settle(batch: list[tuple[str, str, asyncio.Future[None]]], error: str | None) -> None:
    """Wake the publishers of a batch (skipping those already woken or cancelled)."""
    for _, _, done in batch:
        if done.done():
            continue
        if error is None:
            done.set_result(None)
        else:
            done.set_exception(BusUnavailable(error))


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode()
    return str(value) if value is not None else ""
