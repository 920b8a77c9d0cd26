"""How the app factory plugs signaling in: the route, the hub's context, shutdown.

``create_app`` calls :func:`setup_signaling` once, after its own contexts (the
hub needs the call service that ``calls_ctx`` creates). One node: ``LocalBus``
and ``LocalPlacement``. ``HUDDLE_REDIS_URL`` set: ``RedisBus`` and
``RedisPlacement`` on a Redis client of the hub's own, without command retries
so an outage shows at once instead of stalling every publish.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from aiohttp import web
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from server.keys import CALLS, CONFIG, METRICS, READINESS
from signaling.bus import LocalBus, MessageBus
from signaling.handler import PATH, signaling_ws
from signaling.hub import HubOptions, SignalingHub
from signaling.keys import HUB
from signaling.metrics import SignalingMetrics
from signaling.placement import LocalPlacement, RedisPlacement, RoomPlacement
from signaling.redis_bus import RedisBus
from signaling.seats import SeatRegistry

logger = logging.getLogger(__name__)


def setup_signaling(app: web.Application) -> None:
    app.router.add_get(PATH, signaling_ws)
    app.cleanup_ctx.append(signaling_ctx)
    app.on_shutdown.append(signaling_shutdown)


async def signaling_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    metrics = SignalingMetrics(app[METRICS].registry)
    options = HubOptions(disconnect_grace_s=config.limits.disconnect_grace_s)
    redis: Redis | None = None
    seats: SeatRegistry | None = None
    bus: MessageBus
    placement: RoomPlacement
    if config.redis_url is None:
        bus = LocalBus()
        placement = LocalPlacement(config.node_id)
    else:
        redis = Redis.from_url(
            config.redis_url,
            socket_timeout=2.0,
            socket_connect_timeout=2.0,
            socket_keepalive=True,
            retry=Retry(NoBackoff(), 0),
        )
        bus = RedisBus(redis, metrics, config.node_id)
        seats = SeatRegistry(redis, config.node_id, ttl_s=config.signaling.node_ttl_s)
        placement = RedisPlacement(redis, config.node_id, lambda call_id: hub.on_room_lost(call_id))
    hub = SignalingHub(
        app[CALLS],
        bus,
        placement,
        config.signaling,
        metrics,
        node_id=config.node_id,
        options=options,
        seats=seats,
    )
    app[HUB] = hub
    if isinstance(placement, RedisPlacement):
        placement.start()

        async def bus_check() -> None:
            if not hub.bus_healthy:
                raise ConnectionError("Redis pub/sub is disconnected")

        app[READINESS].add("signaling_bus", bus_check)
    await hub.start()
    logger.info(
        "signaling: %s bus, node %s", "Redis" if redis is not None else "in-process", config.node_id
    )
    if redis is None:
        await _reconcile_after_restart(app, hub)
    try:
        yield
    finally:
        await hub.close()
        if redis is not None:
            await redis.aclose()


#: At most this many seats are reconciled at startup (a log line says when cut).
RECONCILE_LIMIT = 10_000


async def _reconcile_after_restart(app: web.Application, hub: SignalingHub) -> None:
    """On a single node (in-process bus), nobody is connected at startup.

    Participants still joined to a live call lost their sockets with the
    previous process (a crash, a kill, a restart): treat them as just
    disconnected, so each leaves after the grace period unless its client
    reconnects first, and a call whose last participant leaves ends, instead
    of seats being held until the stale-call sweep. With Redis other nodes
    may hold those sockets, so nothing is assumed there.
    """
    try:
        seats = await app[CALLS].store.joined_in_live_calls(limit=RECONCILE_LIMIT)
    except Exception:
        logger.exception("signaling: could not list joined participants after restart")
        return
    scheduled = sum(hub.expect_reconnect(call_id, pid, name) for call_id, pid, name in seats)
    if scheduled:
        logger.info(
            "signaling: %d participant(s) of live calls have no socket after restart; "
            "they leave after %.0f s unless they reconnect%s",
            scheduled,
            hub.options.disconnect_grace_s,
            f" (first {RECONCILE_LIMIT} only)" if len(seats) >= RECONCILE_LIMIT else "",
        )


async def signaling_shutdown(app: web.Application) -> None:
    hub = app.get(HUB)
    if hub is not None:
        await hub.shutdown()
