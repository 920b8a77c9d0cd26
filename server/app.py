"""The app factory: the only place that decides what runs and how it is wired.

The same code path serves one embedded node (SQLite, in-process bus) and
several scaled-out nodes (Postgres, Redis); only the choices below differ.
Start-up order is the order of ``app.cleanup_ctx`` in :func:`create_app`;
shut-down runs it backwards (docs/architecture.md).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from pathlib import Path

from aiohttp import web
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from server.auth import TokenService
from server.call_notifications import CallNotifications, DurableNotifications
from server.calls import CallService
from server.config import Config, DatabaseRetry
from server.events import EventFanout, Outbox
from server.health import Readiness
from server.http import admin as admin_routes
from server.http import calls as call_routes
from server.http import misc as misc_routes
from server.http import openapi
from server.http.edge import security_headers
from server.http.middleware import edge_middleware
from server.keys import CALLS, CONFIG, METRICS, READINESS, STORE, TOKENS
from server.membership import Membership, OpenMembership, WebhookMembership
from server.metrics import Metrics
from server.models import utcnow
from server.notify import LogNotifier, WebhookNotifier, notification_metrics
from server.ratelimit import LocalRateLimiter, RateLimiter, RedisRateLimiter
from server.store import SqlStore, StoreUnavailable, create_store
from server.turn import log_turn_status
from server.wiring.drain import DRAIN, DrainControl
from server.wiring.media import SFU, WORKERS, open_media, spans
from server.wiring.signaling import build_hub, reconcile_after_restart
from server.workers import call_sweeper
from signaling.handler import PATH, SignalingEndpoint
from signaling.hub import SignalingHub
from signaling.keys import HUB
from signaling.load import LoadMeter

logger = logging.getLogger(__name__)

REDIS = web.AppKey("redis", Redis)
STATIC_DIR = Path(__file__).resolve().parent.parent / "static"


class StartupError(RuntimeError):
    """A dependency could not be reached at startup; the message says which and why."""


async def open_with_retry(store: SqlStore, retry: DatabaseRetry) -> None:
    """Open the store, retrying with exponential backoff, then fail loudly."""
    for attempt in range(1, retry.attempts + 1):
        try:
            await store.open()
            return
        except StoreUnavailable as exc:
            if attempt == retry.attempts:
                raise StartupError(
                    f"database unreachable after {retry.attempts} attempts: {exc.message}"
                ) from exc
            delay = min(retry.cap_s, retry.base_s * 2 ** (attempt - 1))
            logger.warning(
                "database unreachable (attempt %d/%d), retrying in %.1f s: %s",
                attempt,
                retry.attempts,
                delay,
                exc.message,
            )
            await asyncio.sleep(delay)


def shared_redis(url: str) -> Redis:
    """The app's one Redis client (rate limits, bus, placement, seats): short
    timeouts and no command retries, so an outage shows at once instead of
    stalling every request and publish."""
    client: Redis = Redis.from_url(
        url,
        socket_timeout=2.0,
        socket_connect_timeout=2.0,
        socket_keepalive=True,
        retry=Retry(NoBackoff(), 0),
    )
    return client


def create_app(config: Config, *, clock: Callable[[], datetime] = utcnow) -> web.Application:
    app = web.Application(
        middlewares=[edge_middleware], client_max_size=config.limits.max_body_bytes
    )
    metrics = Metrics()
    readiness = Readiness()
    events = EventFanout()
    tokens = TokenService(config.jwt_secret)
    store = create_store(config.database_url, timeout_s=config.limits.db_timeout_s, metrics=metrics)
    signaling = SignalingEndpoint(tokens)
    app[CONFIG] = config
    app[METRICS] = metrics
    app[READINESS] = readiness
    app[TOKENS] = tokens
    app[STORE] = store
    drain = DrainControl(readiness, config.limits.drain_timeout_s)
    app[DRAIN] = drain
    meter = LoadMeter()
    metrics.turn_config_valid.set(1 if config.turn.uris else 0)
    log_turn_status(config.turn)
    redis: Redis | None = None
    outboxes: list[Outbox] = []
    hub: SignalingHub | None = None

    async def redis_ctx(app: web.Application) -> AsyncIterator[None]:
        nonlocal redis
        if config.redis_url is None:
            logger.info("using single-node routing: in-process bus and rate limits")
            yield
            return
        redis = shared_redis(config.redis_url)
        app[REDIS] = redis
        readiness.add("redis", redis.ping)
        try:
            yield
        finally:
            await redis.aclose()

    async def store_ctx(app: web.Application) -> AsyncIterator[None]:
        await open_with_retry(store, config.db_retry)
        readiness.add("database", store.ping)
        logger.info("store: %s", store.backend_name)
        yield
        await readiness.close()
        await store.close()

    async def notifier_ctx(app: web.Application) -> AsyncIterator[None]:
        """Webhook notifications go through the durable outbox; without a webhook
        they are only logged, after each transition."""
        if config.webhook.url is None or config.webhook.secret is None:
            listener = CallNotifications(LogNotifier())
            events.add(listener)
            yield
            events.remove(listener)
            return
        notifier = WebhookNotifier(
            store,
            config.webhook.url,
            config.webhook.secret,
            metrics=notification_metrics(metrics.registry),
        )
        await notifier.start()
        outboxes.append(DurableNotifications(notifier))
        try:
            yield
        finally:
            outboxes.clear()
            await notifier.close()

    async def calls_ctx(app: web.Application) -> AsyncIterator[None]:
        """The call service, with rate limits counted in Redis when several nodes
        share it, else in process."""
        limiter: RateLimiter = LocalRateLimiter() if redis is None else RedisRateLimiter(redis)
        membership: Membership = OpenMembership()
        if config.membership.url is not None and config.membership.secret is not None:
            membership = WebhookMembership(
                config.membership.url,
                config.membership.secret,
                timeout_s=config.membership.timeout_s,
            )
        elif not config.dev_mode:
            logger.warning(
                "HUDDLE_MEMBERSHIP_URL is unset: conversation members are whoever the "
                "creator lists (docs/api.md, Authorization rules)"
            )
        app[CALLS] = CallService(
            store,
            config.limits,
            metrics,
            limiter,
            events,
            clock,
            outbox=outboxes[0] if outboxes else None,
            membership=membership,
        )
        try:
            yield
        finally:
            await membership.close()

    async def workers_ctx(app: web.Application) -> AsyncIterator[None]:
        sweeper = call_sweeper(app[CALLS])
        sweeper.start()
        yield
        await sweeper.close()

    async def signaling_ctx(app: web.Application) -> AsyncIterator[None]:
        nonlocal hub
        calls = app[CALLS]
        hub = build_hub(config, calls, metrics, readiness, redis, meter)
        app[HUB] = hub
        await hub.start()
        signaling.hub = hub
        drain.hub = hub
        logger.info(
            "signaling: %s bus, node %s",
            "Redis" if redis is not None else "in-process",
            config.node_id,
        )
        if redis is None:
            await reconcile_after_restart(calls, hub)
        try:
            yield
        finally:
            await drain.close()
            drain.hub = None
            signaling.hub = None
            await hub.close()

    async def media_ctx(app: web.Application) -> AsyncIterator[None]:
        assert hub is not None
        span = hub if spans(config) else None
        async with open_media(config, hub, metrics.registry, span) as plane:
            if plane.sfu is not None:
                app[SFU] = plane.sfu
            if plane.pool is not None:
                app[WORKERS] = plane.pool
            hub.attach_sfu(plane.endpoint, plane.span)
            meter.attach(plane.load)
            logger.info(
                "media: SFU ready, %s (ICE hosts: %s)",
                "in this process" if plane.pool is None else f"{config.workers} worker process(es)",
                ", ".join(config.media.ice_hosts) or "all non-loopback interfaces",
            )
            try:
                yield
            finally:
                meter.detach()
                hub.attach_sfu(None)

    async def on_shutdown(app: web.Application) -> None:
        readiness.shutting_down = True
        if hub is not None:
            await hub.shutdown()  # every socket closes with 1001 before the contexts unwind

    # Start-up order; shut-down runs it backwards, so the SFU closes its rooms
    # before the hub goes away, the hub before the call service and the store,
    # and the Redis client last.
    app.cleanup_ctx.extend(
        [
            redis_ctx,  # the one Redis client, when HUDDLE_REDIS_URL is set
            store_ctx,  # the database (retried at start-up)
            notifier_ctx,  # webhooks through the outbox, or a log
            calls_ctx,  # the call service: store, rate limits, outbox, membership
            workers_ctx,  # the sweeper of stale and timed-out calls
            signaling_ctx,  # the hub: bus, placement, seats; listens to call events
            media_ctx,  # the SFU or its worker processes, plugged into the hub (media.seam)
        ]
    )
    app.on_shutdown.append(on_shutdown)
    app.on_response_prepare.append(security_headers(config.http))
    app.router.add_get(PATH, signaling.handle)
    app.add_routes(misc_routes.routes)
    app.add_routes(call_routes.routes)
    app.add_routes(admin_routes.routes)
    app.add_routes(openapi.routes)
    _add_static(app, Path(config.static_dir) if config.static_dir else STATIC_DIR)
    return app


def _add_static(app: web.Application, folder: Path) -> None:
    index = folder / "index.html"
    if not index.is_file():
        return

    async def serve_index(request: web.Request) -> web.FileResponse:
        return web.FileResponse(index)

    app.router.add_get("/", serve_index)
    app.router.add_static("/static/", folder)
