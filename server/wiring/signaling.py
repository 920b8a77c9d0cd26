"""Signaling in the composition root: which bus and placement, the hub, its route.

One node: ``LocalBus`` and ``LocalPlacement``. ``HUDDLE_REDIS_URL`` set:
``RedisBus``, ``RedisPlacement`` (load-aware, publishing this node's load),
the ``SeatRegistry`` and the watch on rooms whose node died
(:mod:`signaling.owner_watch`) on the app's one Redis client.
"""

from __future__ import annotations

import logging

from redis.asyncio import Redis

from server.calls import CallService
from server.config import Config
from server.health import Readiness
from server.metrics import Metrics
from server.wiring.media import spans
from signaling.bus import LocalBus, MessageBus
from signaling.hub import HubOptions, SignalingHub
from signaling.load import LoadMeter
from signaling.metrics import SignalingMetrics
from signaling.owner_watch import RedisOwnerProbe
from signaling.placement import LocalPlacement, RedisPlacement, RoomPlacement
from signaling.redis_bus import RedisBus
from signaling.seats import SeatRegistry
from signaling.span import SpanPlacement

logger = logging.getLogger(__name__)

#: At most this many seats are reconciled at startup (a log line says when cut).
RECONCILE_LIMIT = 10_000


def build_hub(
    config: Config,
    calls: CallService,
    metrics: Metrics,
    readiness: Readiness,
    redis: Redis | None,
    meter: LoadMeter | None = None,
) -> SignalingHub:
    """The hub on the in-process bus, or on Redis when the app has a client (its
    placement publishes the node's load as ``meter`` samples it)."""
    signaling_metrics = SignalingMetrics(metrics.registry)
    options = HubOptions(disconnect_grace_s=config.limits.disconnect_grace_s)
    seats: SeatRegistry | None = None
    bus: MessageBus
    placement: RoomPlacement
    hub: SignalingHub | None = None

    async def room_lost(call_id: str) -> None:
        if hub is not None:
            await hub.on_room_lost(call_id)

    if redis is None:
        bus = LocalBus()
        placement = LocalPlacement(config.node_id)
    else:
        bus = RedisBus(redis, signaling_metrics, config.node_id)
        seats = SeatRegistry(redis, config.node_id, ttl_s=config.signaling.node_ttl_s)
        placement = RedisPlacement(redis, config.node_id, room_lost, meter=meter)
    hub = SignalingHub(
        calls,
        bus,
        placement,
        config.signaling,
        signaling_metrics,
        node_id=config.node_id,
        options=options,
        seats=seats,
        owner_probe=RedisOwnerProbe(redis) if redis is not None else None,
    )
    if redis is not None and spans(config):
        hub.sfu.span = SpanPlacement(
            redis, config.node_id, config.span, ttl_s=config.signaling.node_ttl_s
        )
        logger.info(
            "signaling: rooms may span nodes (policy %s, %d per node)",
            config.span.policy,
            config.span.node_limit,
        )
    if isinstance(placement, RedisPlacement):
        placement.start()
        ready_hub = hub

        async def bus_check() -> None:
            if not ready_hub.bus_healthy:
                raise ConnectionError("Redis pub/sub is disconnected")

        readiness.add("signaling_bus", bus_check)
    return hub


async def reconcile_after_restart(calls: CallService, hub: SignalingHub) -> None:
    """On a single node (in-process bus), nobody is connected at startup.

    Participants still joined to a live call lost their sockets with the
    previous process (a crash, a kill, a restart): treat them as just
    disconnected, so each leaves after the grace period unless its client
    reconnects first, and a call whose last participant leaves ends, instead
    of seats being held until the stale-call sweep. With Redis other nodes
    may hold those sockets, so nothing is assumed there.
    """
    try:
        seats = await calls.store.joined_in_live_calls(limit=RECONCILE_LIMIT)
    except Exception:
        logger.exception("signaling: could not list joined participants after restart")
        return
    scheduled = sum(hub.grace.expect_reconnect(call_id, pid, name) for call_id, pid, name in seats)
    if scheduled:
        logger.info(
            "signaling: %d participant(s) of live calls have no socket after restart; "
            "they leave after %.0f s unless they reconnect%s",
            scheduled,
            hub.options.disconnect_grace_s,
            f" (first {RECONCILE_LIMIT} only)" if len(seats) >= RECONCILE_LIMIT else "",
        )
